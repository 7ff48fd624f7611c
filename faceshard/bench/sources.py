"""`faceshard bench sources`: per-video vs source-aware processing of one FF++-shaped corpus, paired.

The corpus is `faceshard synth --sources N` (each source with 4 aligned fakes, as FF++ ships them;
`--misaligned` adds 3 fakes per source that must fall back). One worker's processor (models loaded
once, as a Ray worker holds them) processes every video both ways, alternating which goes first over
`--repeat` rounds; reported are the detector's frames and wall seconds of each way and their ratios.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import typer

FAST = ("depth.enabled=false", "embed.enabled=false")


def run_bench_sources(
    work: Path, n_sources: int, preset: str, sets: tuple[str, ...], repeat: int, misaligned: bool, frames: int
) -> dict[str, Any]:
    """Both ways over the same videos with the same processor; the per-round numbers and their medians."""
    from faceshard.app.synth import make_ffpp_corpus
    from faceshard.config import load_config
    from faceshard.storage.manifest import load_manifest
    from faceshard.tasks.pipeline import VideoProcessor
    from faceshard.tasks.shard import process_videos

    corpus = work / f"ffpp-{n_sources}x{frames}{'-misaligned' if misaligned else ''}"
    manifest = corpus / "manifest.csv"
    if not manifest.exists():
        make_ffpp_corpus(corpus, n_sources=n_sources, misaligned=misaligned, frames=frames)
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
            measured["source_aware" if aware else "per_video"] = {
                "wall_s": round(time.perf_counter() - started, 3),
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
            "python": platform.python_version(),
        },
        "corpus": {"sources": n_sources, "videos": len(videos), "frames": frames, "misaligned": misaligned},
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
    ] = 4,
    preset: Annotated[str, typer.Option(help="preset of the measured work")] = "demo",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="overrides (default: no depth/embeddings)")
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, help="rounds, alternating which way goes first")] = 1,
    misaligned: Annotated[bool, typer.Option(help="add 3 misaligned fakes per source")] = False,
    frames: Annotated[int, typer.Option(min=10, help="frames per clip (10 fps)")] = 160,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="also write the report here")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="only the JSON report (on stdout), no summary lines on stderr")
    ] = False,
) -> None:
    """Detector frames and wall time, per-video vs source-aware, on an FF++-shaped synth corpus."""
    work.mkdir(parents=True, exist_ok=True)
    report = run_bench_sources(
        work.resolve(), n_sources, preset, tuple(set_) if set_ else FAST, repeat, misaligned, frames
    )
    text = json.dumps(report, indent=2)
    print(text)
    if json_out is not None:
        json_out.write_text(text + "\n")
    if as_json:
        return
    last = report["rounds"][-1]
    typer.echo(
        f"detector frames: per-video {last['per_video']['detector_frames']}, source-aware"
        f" {last['source_aware']['detector_frames']} ({report['detector_frames_ratio']}x fewer); wall:"
        f" {last['per_video']['wall_s']} s vs {last['source_aware']['wall_s']} s ({report['wall_ratio']}x less)",
        err=True,
    )
