"""`faceshard bench startup`: what a user waits for before and besides the work, measured in one run.

Each build is `faceshard build` in a fresh process, as a user runs it. Printed (and written as JSON
with `--json-out`):

* start-up's share of a real-clips build, with the Prefect server, Ray and the models started one
  after another (FACESHARD_STARTUP=serial, how builds started before) and side by side (the
  default), each build's wall time against decode-only of the same files;
* the time to the build's first line of output;
* a build with nothing to do (every shard committed): its wall time, no server started.

The clips are the 21 of `faceshard bench build` when ../shared/fixtures is there, else a synthetic
corpus (`faceshard synth`), so the benchmark runs on any clone.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

# faceshard.bench.build (PyAV, numpy) is imported by the functions that use it: this module is
# imported by every `faceshard` command, which must start in well under a second.


def timed_build(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `command` (a `faceshard build … --json`): wall seconds, seconds to its first line of output
    (stderr or stdout), its JSON summary, and the start-up phases it printed."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first: list[float] = []
    stderr: list[str] = []

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if not first:
                first.append(time.perf_counter() - started)
            stderr.append(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stdout = process.stdout.read() if process.stdout is not None else ""
    process.wait()
    wall = time.perf_counter() - started
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"faceshard build failed ({process.returncode}):\n{''.join(stderr)[-3000:]}")
    phases = {}
    for line in stderr:
        parts = line.split()
        if (
            len(parts) >= 3
            and parts[2] == "s"
            and parts[0] in ("manifest", "lease", "plan", "prefect", "ray", "models")
        ):
            phases[parts[0]] = float(parts[1])
    return {
        "wall_s": round(wall, 2),
        "first_line_s": round(first[0], 3) if first else None,
        "summary": json.loads(stdout[stdout.index("{") :]),
        "phases_s": phases,
    }


def _clips(fixtures: Path | None, work: Path, limit: int | None) -> list[Path]:
    if fixtures is not None and fixtures.is_dir():
        from faceshard.bench.clips import real_clips

        clips = real_clips(fixtures.resolve(), work / "clips")
    else:
        import csv

        from faceshard.app.synth import make_corpus

        manifest = make_corpus(work / "synth", n_videos=limit or 6, seed=0)
        with manifest.open() as handle:
            clips = [Path(manifest.parent, row["path"]).resolve() for row in csv.DictReader(handle)]
    return clips[:limit] if limit else clips


def run_bench_startup(
    fixtures: Path | None,
    work: Path,
    *,
    preset: str = "mintime",
    sets: tuple[str, ...] | None = None,
    shard_size: int = 4,
    clips: int | None = None,
    repeat: int = 1,
    serial: bool = True,
) -> dict[str, Any]:
    """Serial (first round only) and side-by-side start-up on the same clips, `repeat` rounds, then a
    no-op build; the JSON report. Each mode's entry is its median round (by ratio); `rounds` holds
    every round.
    `sets` default: `faceshard bench build`'s (MINTIME's work offline, no embeddings)."""
    from faceshard.bench.build import (
        MINTIME_WORK,
        _clean_env,
        _faceshard_command,
        decode_only,
        machine,
        write_manifest,
    )

    sets = sets or MINTIME_WORK

    paths = _clips(fixtures, work, clips)
    manifest = write_manifest(paths, work / "startup-manifest.csv")
    out = work / "startup-dataset"
    command = [*_faceshard_command(), "build", str(manifest), "--out", str(out), "--preset", preset, "--json"]
    command += ["--shard-size", str(shard_size), *(arg for s in sets for arg in ("--set", s))]
    report: dict[str, Any] = {
        "machine": machine(),
        "videos": len(paths),
        "preset": preset,
        "sets": list(sets),
        "rounds": [],
    }
    decodes = [decode_only(paths)]
    for round_ in range(repeat):
        measured: dict[str, Any] = {}
        # the baseline (servers one after another) once; the default, side by side, every round
        for mode in ("serial", "side_by_side") if serial and round_ == 0 else ("side_by_side",):
            shutil.rmtree(out, ignore_errors=True)
            env = _clean_env(work) | {"FACESHARD_STARTUP": "serial" if mode == "serial" else "parallel"}
            run = timed_build(command, env)
            decodes.append(decode_only(paths))
            decode = (decodes[-2] + decodes[-1]) / 2  # decode-only just before and just after
            summary = run.pop("summary")
            work_s = float(summary["seconds"]) - float(summary["startup_seconds"])  # first shard → end
            startup = run["wall_s"] - work_s  # the process's start, imports included
            measured[mode] = {
                **run,
                "startup_s": round(startup, 2),
                "startup_share": round(startup / run["wall_s"], 3),
                "decode_only_s": round(decode, 2),
                "ratio": round(run["wall_s"] / decode, 2),
                "videos_processed": summary["videos_processed"],
                "load_average": _load_average(),
            }
        report["rounds"].append(measured)
    for mode in ("serial", "side_by_side") if serial else ("side_by_side",):
        ranked = sorted(
            (m for m in report["rounds"] if mode in m), key=lambda measured: measured[mode]["ratio"]
        )
        report[mode] = {**ranked[(len(ranked) - 1) // 2][mode], "rounds": len(ranked)}
        report[mode]["median_ratio"] = statistics.median(measured[mode]["ratio"] for measured in ranked)
    no_op = timed_build(command, _clean_env(work))
    summary = no_op.pop("summary")
    report["no_op"] = {
        **no_op,
        "videos_processed": summary["videos_processed"],
        "skipped": summary["skipped"],
    }
    return report


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The must-show numbers, one line each (each mode: its median round, then every round's ratio)."""
    no_op, side = report["no_op"], report["side_by_side"]
    load = report["machine"]["load_average_at_start"]
    lines = [
        f"machine: {report['machine']['cpus']} CPUs, load {load}; {report['videos']} clips; "
        f"{side['rounds']} round(s)",
        f"no-op build: {no_op['wall_s']} s wall (goal < 5 s), phases {no_op['phases_s']}",
        f"first line of output: {no_op['first_line_s']} s (goal < 1 s; build with work: {side['first_line_s']} s)",
    ]
    for mode, words, goal in (
        ("serial", "one after another", ""),
        ("side_by_side", "side by side", "; goal <= 6x"),
    ):
        if mode not in report:
            continue
        run = report[mode]
        every = ", ".join(f"{measured[mode]['ratio']}x" for measured in report["rounds"] if mode in measured)
        lines.append(
            f"start-up {words}: {run['startup_s']} s = {run['startup_share']:.0%} of a {run['wall_s']} s build "
            f"(median {run['median_ratio']}x decode-only{goal}; rounds {every})"
        )
    return lines


def startup(
    fixtures: Annotated[
        Path, typer.Option(help="folder with the real fixture clips (absent: a synthetic corpus)")
    ] = Path("../shared/fixtures"),
    work: Annotated[Path, typer.Option(help="where clips and outputs go")] = Path("bench-work"),
    json_out: Annotated[Path | None, typer.Option("--json-out", help="also write the report here")] = None,
    preset: Annotated[str, typer.Option(help="preset of the measured work")] = "mintime",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="overrides (default: MINTIME work offline, no embeddings)"),
    ] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="videos per shard")] = 4,
    clips: Annotated[int | None, typer.Option(min=1, help="use only the first N clips")] = None,
    repeat: Annotated[
        int, typer.Option(min=1, help="rounds of builds; each mode reports its median round and every round")
    ] = 1,
    serial: Annotated[
        bool, typer.Option(help="also build once with the servers started one after another (the baseline)")
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="only the JSON report (on stdout), no summary lines on stderr")
    ] = False,
) -> None:
    """Start-up: a no-op build's wall time, time to first output, start-up's share serial vs side by side.

    With --repeat N the default (side by side) builds N times, the serial baseline once (decode-only
    is measured around each build); the median round and every round's ratio are reported."""
    work.mkdir(parents=True, exist_ok=True)
    report = run_bench_startup(
        fixtures, work.resolve(), preset=preset, sets=tuple(set_) if set_ else None,
        shard_size=shard_size, clips=clips, repeat=repeat, serial=serial,
    )  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if json_out is not None:
        json_out.write_text(text + "\n")
    for line in [] if as_json else summary_lines(report):
        typer.echo(line, err=True)
