"""`faceshard bench sources`: per-video vs source-aware processing of one FF++-shaped corpus, paired.

The corpus is `faceshard synth --sources N` shaped as FF++ c23 is (each source with 4 aligned fakes
swapped as FF++ swaps, 25 fps, 854 × 480, 10-s clips by default; `--misaligned` adds 3 fakes per source
that must fall back), sampled as DeepfakeBench samples (`uniform:32`, MTCNN of the demo preset, no
depth or embeddings by default). One worker's processor (models loaded once, as a Ray worker holds
them) processes every video both ways, alternating which goes first over `--repeat` rounds; reported
are the detector's frames, the seconds per stage and the wall seconds of each way, and their ratios.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

FAST = ("depth.enabled=false", "embed.enabled=false", "sampling.strategy=uniform:32")


def run_bench_sources(
    work: Path,
    n_sources: int,
    preset: str,
    sets: tuple[str, ...],
    repeat: int,
    misaligned: bool,
    frames: int,
    fps: int = 25,
    size: tuple[int, int] = (854, 480),
) -> dict[str, Any]:
    """Both ways over the same videos with the same processor; the per-round numbers and their medians."""
    from faceshard.app.synth import make_ffpp_corpus
    from faceshard.config import load_config
    from faceshard.storage.manifest import load_manifest
    from faceshard.tasks.pipeline import VideoProcessor
    from faceshard.tasks.shard import process_videos

    shape = f"{n_sources}x{frames}-{fps}fps-{size[0]}x{size[1]}"
    corpus = work / f"ffpp-{shape}{'-misaligned' if misaligned else ''}"
    manifest = corpus / "manifest.csv"
    if not manifest.exists():
        make_ffpp_corpus(
            corpus, n_sources=n_sources, misaligned=misaligned, frames=frames, fps=fps, size=size
        )
    videos = load_manifest(str(manifest)).tasks()
    cfg = load_config(preset, overrides=list(sets))
    processor = VideoProcessor(cfg)
    load = os.getloadavg()[0]
    rounds = []
    for r in range(repeat):
        order = (False, True) if r % 2 == 0 else (True, False)
        measured = {}
        for aware in order:
            started = time.perf_counter()
            results = process_videos(processor, videos, 0, source_aware=aware)
            stages: Counter[str] = Counter()
            for result in results:
                stages.update(result.seconds)
            measured["source_aware" if aware else "per_video"] = {
                "wall_s": round(time.perf_counter() - started, 3),
                "stage_s": {k: round(v, 2) for k, v in sorted(stages.items())},
                "detector_frames": sum(r.detector_frames for r in results),
                "faces": sum(len(r.faces) for r in results),
                "reused": sum(r.video["detections"] == "source" for r in results),
                "errors": sum(r.video["status"] == "error" for r in results),
            }
        rounds.append(measured)

    def median_ratio(key: str) -> float:
        return round(
            statistics.median(m["per_video"][key] / max(m["source_aware"][key], 1e-9) for m in rounds), 2
        )

    return {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": round(load, 1),
            "load_average_at_end": round(os.getloadavg()[0], 1),
            "python": platform.python_version(),
        },
        "corpus": {
            "sources": n_sources,
            "videos": len(videos),
            "frames": frames,
            "fps": fps,
            "size": f"{size[0]}x{size[1]}",
            "misaligned": misaligned,
        },
        "preset": preset,
        "sets": list(sets),
        "rounds": rounds,
        "detector_frames_ratio": median_ratio("detector_frames"),
        "wall_ratio": median_ratio("wall_s"),
    }


def sources(
    work: Annotated[Path, typer.Option(help="where the corpus is made (kept between runs)")] = Path(
        "bench-work"
    ),
    n_sources: Annotated[
        int, typer.Option("--sources", min=1, max=100, help="source clips (5 videos each)")
    ] = 2,
    preset: Annotated[str, typer.Option(help="preset of the measured work")] = "demo",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="overrides (default: uniform:32 sampling, no depth/embeddings)"),
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, help="rounds, alternating which way goes first")] = 1,
    misaligned: Annotated[bool, typer.Option(help="add 3 misaligned fakes per source")] = False,
    frames: Annotated[int, typer.Option(min=10, help="frames per clip")] = 250,
    fps: Annotated[int, typer.Option(min=1, help="frame rate of the clips (FF++: 25-30)")] = 25,
    width: Annotated[int, typer.Option(min=64, help="frame width (even)")] = 854,
    height: Annotated[int, typer.Option(min=64, help="frame height (even)")] = 480,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="also write the report here")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="only the JSON report (on stdout), no summary lines on stderr")
    ] = False,
) -> None:
    """Detector frames and wall time, per-video vs source-aware, on an FF++-shaped synth corpus."""
    work.mkdir(parents=True, exist_ok=True)
    report = run_bench_sources(
        work.resolve(),
        n_sources,
        preset,
        tuple(set_) if set_ else FAST,
        repeat,
        misaligned,
        frames,
        fps,
        (width, height),
    )
    text = json.dumps(report, indent=2)
    print(text)
    if json_out is not None:
        json_out.write_text(text + "\n")
    if as_json:
        return
    last = report["rounds"][-1]
    typer.echo(
        f"load average {report['machine']['load_average_at_start']} on {report['machine']['cpus']} CPUs;"
        f" seconds per stage, per-video {last['per_video']['stage_s']}, source-aware"
        f" {last['source_aware']['stage_s']}",
        err=True,
    )
    typer.echo(
        f"detector frames: per-video {last['per_video']['detector_frames']}, source-aware"
        f" {last['source_aware']['detector_frames']} ({report['detector_frames_ratio']}x fewer); wall:"
        f" {last['per_video']['wall_s']} s vs {last['source_aware']['wall_s']} s ({report['wall_ratio']}x less)",
        err=True,
    )
