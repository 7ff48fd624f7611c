"""The `faceshard bench build` command: arguments, printing and the JSON file (work in bench.build)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from faceshard.errors import UserError

DEFAULT_FIXTURES = Path("../shared/fixtures")


def build(
    fixtures: Annotated[Path, typer.Option(help="folder with the real fixture clips")] = DEFAULT_FIXTURES,
    work: Annotated[Path, typer.Option(help="where clips (kept between runs) and outputs go")] = Path(
        "bench-work"
    ),
    json_out: Annotated[Path | None, typer.Option("--json-out", help="also write the report here")] = None,
    preset: Annotated[str, typer.Option(help="preset of the measured work")] = "mintime",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="overrides (default: MINTIME work offline, no embeddings)"),
    ] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="videos per shard of the end-to-end build")] = 4,
    part: Annotated[
        list[str] | None, typer.Option(help="e2e | long | stages (repeatable; default: all)")
    ] = None,
    repeat: Annotated[
        int, typer.Option(min=1, help="end-to-end builds to run; the median-ratio one is reported")
    ] = 1,
    as_json: Annotated[
        bool, typer.Option("--json", help="only the JSON report (on stdout), no summary lines on stderr")
    ] = False,
) -> None:
    """End-to-end build vs decode-only of the same real clips; a face-less 2-minute clip; worker memory."""
    from faceshard.bench.build import MINTIME_WORK, run_bench_build

    if not fixtures.is_dir():
        raise UserError(
            f"--fixtures {fixtures} is not a folder of fixture clips: pass the folder that holds them"
        )
    work.mkdir(parents=True, exist_ok=True)
    report = run_bench_build(
        fixtures.resolve(),
        work.resolve(),
        preset=preset,
        sets=tuple(set_) if set_ else MINTIME_WORK,
        shard_size=shard_size,
        parts=tuple(part) if part else ("e2e", "long", "stages"),
        repeat=repeat,
    )
    text = json.dumps(report, indent=2)
    print(text)
    if json_out is not None:
        json_out.write_text(text + "\n")
    for line in [] if as_json else summary_lines(report):
        typer.echo(line, err=True)


def summary_lines(report: dict) -> list[str]:
    """The must-show numbers, one line each."""
    lines = [f"machine: {report['machine']['cpus']} CPUs, load {report['machine']['load_average_at_start']}"]
    e2e = report.get("end_to_end")
    if e2e:
        lines.append(
            f"end-to-end: {e2e['videos']} real clips, build {e2e['build_wall_s']} s (start-up {e2e['startup_s']} s) "
            f"vs decode-only {e2e['decode_only_s']} s = {e2e['ratio']}x; steady {e2e['steady_videos_per_s']} videos/s"
        )
        if e2e["runs"] > 1:
            lines.append(f"end-to-end ratios of {e2e['runs']} builds: {e2e['ratios']} (the median one above)")
    long, short = report.get("faceless_1080p_2min"), report.get("short_1080p_5s")
    if long and short:
        lines.append(
            f"face-less 2-min 1080p: {long['video_seconds']} s vs decode-only {long['decode_only_s']} s = {long['ratio']}x"
        )
        lines.append(
            f"peak worker RSS: 2-min {long['peak_rss_mb']} MB vs 5-s {short['peak_rss_mb']} MB = "
            f"{report['peak_rss_ratio_2min_vs_5s']}x"
        )
    stages = report.get("model_stages")
    if stages:
        mtcnn, identity = stages["mtcnn"], stages["dlib_identity"]
        lines.append(
            f"MTCNN stage vs its bare cascade: {mtcnn['ratio']}x; facenet-pytorch's detect takes "
            f"{mtcnn['facenet_over_ours']}x our stage's time ({mtcnn['frames']} 1080p frames)"
        )
        lines.append(
            f"dlib identity stage vs a bare forward: {identity['ratio']}x ({identity['faces']} faces)"
        )
    return lines
