"""`faceshard`: the front door (synth, manifest, build, status, report, train, export, demo)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from faceshard.config import PRESETS, BuildConfig, ConfigError, load_config

app = typer.Typer(
    name="faceshard",
    help="One-pass, resumable face preprocessing for video deepfake-detection datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
stdout = Console()


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="directory to write clips, truth and manifest.csv")],
    videos: Annotated[int, typer.Option("--videos", min=1, max=1000, help="number of clips")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="same seed, same corpus")] = 0,
) -> None:
    """Generate a labelled synthetic corpus from real face photos shipped in installed packages."""
    from faceshard.synth import make_corpus

    manifest = make_corpus(out, n_videos=videos, seed=seed)
    stdout.print(f"wrote {videos} clips and {manifest}")


MANIFEST_HELP = (
    "Write a manifest (path, label, method, split, video_id, source, dataset, donor) for a dataset as it ships."
    "\n\nFORMAT and what ROOT must hold:"
    "\n\n* forgerynet: Training/video_list.txt (train; validation drawn from it) and Validation/video_list.txt"
    " (test), or lists named with --list FILE[=SPLIT]."
    "\n\n* ffpp: original_sequences/ and manipulated_sequences/ (--compression c0, c23 or c40); the official"
    " train/val/test.json pair lists from ROOT/splits/, ROOT or --splits DIR."
    "\n\n* celebdf: Celeb-real/, YouTube-real/, Celeb-synthesis/ and List_of_testing_videos.txt (test)."
    "\n\n* dfdc: a metadata.json in every part folder."
    "\n\n* glob: files matching --pattern, labelled by --label-from-dir real=0,fake=1 or --label 0|1."
    "\n\n`source` is the real video whose footage a fake is (FF++ 000_003 → 000, Celeb-DF id0_id1_0000 →"
    " id0_0000, DFDC `original`). --split auto keeps official splits and, where the dataset has no"
    " validation split, draws MINTIME's (per class int(N/10 · count/N), random.Random(42)); mintime redraws"
    " validation from train and val; none keeps only the dataset's own. A source, its fakes and their donor"
    " videos always share a split."
)


@app.command(help=MANIFEST_HELP)
def manifest(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="forgerynet, ffpp, celebdf, dfdc or glob")],
    root: Annotated[Path, typer.Argument(metavar="ROOT", help="the dataset's folder, as it ships")],
    out: Annotated[Path, typer.Option("--out", "-o", help="manifest to write: .parquet or .csv")],
    split: Annotated[str, typer.Option(help="auto, mintime or none")] = "auto",
    seed: Annotated[int, typer.Option(help="seed of the validation draw (MINTIME: 42)")] = 42,
    list_: Annotated[
        list[str] | None,
        typer.Option("--list", help="forgerynet: video_list.txt to read, FILE[=SPLIT] (repeatable)"),
    ] = None,
    compression: Annotated[str | None, typer.Option(help="ffpp: c0 (raw), c23 (default) or c40")] = None,
    splits: Annotated[Path | None, typer.Option(help="ffpp: folder of train/val/test.json")] = None,
    pattern: Annotated[str | None, typer.Option(help="glob: files under ROOT (default **/*.mp4)")] = None,
    label: Annotated[
        str | None, typer.Option(help="glob: one label for every file, 0/1 or real/fake")
    ] = None,
    label_from_dir: Annotated[
        str | None, typer.Option(help="glob: label by folder name, e.g. real=0,fake=1")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="glob: dataset name (default: ROOT's name)")] = None,
) -> None:
    from faceshard.errors import ManifestError
    from faceshard.storage.intake import SPLIT_MODES, build_manifest, outside, write_manifest

    if split not in SPLIT_MODES:
        _fail(f"--split {split!r}: one of {', '.join(SPLIT_MODES)}")
    options = {
        "lists": list_,
        "compression": compression,
        "splits": splits,
        "pattern": pattern,
        "label": label,
        "label_from_dir": label_from_dir,
        "dataset": dataset,
    }
    try:
        intake = build_manifest(fmt, root, split=split, seed=seed, **options)
        written = write_manifest(intake, out)
    except (ManifestError, OSError) as exc:
        _fail(str(exc))
    for note in intake.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    _print_manifest_summary(intake.frame, written)
    if outside(intake, written):
        console.print(
            f"[yellow]note:[/] videos lie outside {written.parent}: build with "
            f"--root {escape(str(root.expanduser().resolve()))}"
        )


def _print_manifest_summary(frame: Any, written: Path) -> None:
    counts = frame.group_by("split", "label").len().sort("split", "label")
    table = Table()
    for column in ("split", "real", "fake"):
        table.add_column(column)
    by_split: dict[str, dict[int, int]] = {}
    for row in counts.iter_rows(named=True):
        by_split.setdefault(row["split"], {})[row["label"]] = row["len"]
    for name, labels in by_split.items():
        table.add_row(name, str(labels.get(0, 0)), str(labels.get(1, 0)))
    linked = frame["source"].is_not_null().sum()
    stdout.print(table)
    stdout.print(f"wrote {escape(str(written))}: {len(frame)} videos, {linked} fakes linked to their source")


def resolve_build_config(
    preset: str, config: Path | None, sets: list[str] | None, shard_size: int | None
) -> BuildConfig:
    """Validate everything before anything is written; a bad key or value exits 2 with one message."""
    try:
        return load_config(preset, config, sets or [], shard_size)
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


@app.command()
def build(
    manifest: Annotated[str, typer.Argument(help="CSV or Parquet with path,label[,method,split,video_id]")],
    out: Annotated[str, typer.Option("--out", help="output URI: a path, file://, memory:// or s3://")],
    preset: Annotated[str, typer.Option(help=f"one of {', '.join(PRESETS)}")] = "demo",
    config: Annotated[Path | None, typer.Option(help="YAML file merged over the preset")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="dotted override, e.g. depth.enabled=false (repeatable)")
    ] = None,
    shard_size: Annotated[int | None, typer.Option(min=1, help="videos per shard")] = None,
    rebuild: Annotated[bool, typer.Option(help="discard an output built with another fingerprint")] = False,
    retry_failed: Annotated[bool, typer.Option(help="reprocess only videos whose rows say error")] = False,
    root: Annotated[
        list[str] | None,
        typer.Option(help="allowed root for video paths (repeatable; default: manifest dir)"),
    ] = None,
    prune: Annotated[
        bool, typer.Option(help="delete committed rows of videos that are no longer in the manifest")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan (videos, shards, pending, …); process nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Build (or resume) a dataset: decode, detect, crop, cluster, embed, commit Parquet shards.

    Videos already committed in the output (by video_id) are skipped wherever they sit in the
    manifest; new ones go to new shards; rows of videos missing from the manifest stay (reported as
    not_in_manifest) unless --prune.
    """
    cfg = resolve_build_config(preset, config, set_, shard_size)
    from faceshard.errors import StorageError
    from faceshard.flows.plan import dry_run as plan_only
    from faceshard.models.registry import WeightsUnavailableError
    from faceshard.progress_bar import BuildProgressBar

    options = {"rebuild": rebuild, "retry_failed": retry_failed, "roots": root, "prune": prune}
    try:
        if dry_run:
            plan = plan_only(manifest, out, cfg, **options)
            if as_json:
                print(json.dumps(plan, indent=2))
            else:
                _print_plan(plan)
            return
        from faceshard.flows.build import run_build

        with BuildProgressBar(console) as bar:
            summary = run_build(manifest, out, cfg, **options, on_progress=bar)
    except (StorageError, WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    if summary["failed_shards"]:
        raise typer.Exit(1)


def _print_plan(plan: dict[str, Any]) -> None:
    table = Table(title="faceshard build --dry-run (nothing processed or written)", show_header=False)
    for key, value in plan.items():
        if key != "dry_run":
            table.add_row(key, escape(str(value)))
    stdout.print(table)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="faceshard build", show_header=False)
    keys = ("shards_total", "processed", "skipped", "videos_total", "videos_processed", "videos_skipped")
    for key in (*keys, "not_in_manifest", "faces", "identities", "seconds"):
        table.add_row(key, str(summary[key]))
    table.add_row("video status", ", ".join(f"{k}={v}" for k, v in sorted(summary["status_counts"].items())))
    table.add_row("failed shards", str(len(summary["failed_shards"])))
    table.add_row("fingerprint", summary["fingerprint"])
    if summary.get("random_weights"):
        table.add_row("[yellow]random weights[/]", ", ".join(summary["random_weights"]))
    stdout.print(table)


@app.command()
def status(
    uri: Annotated[str, typer.Argument(help="output URI of a build")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Committed / failed / pending shards, failed videos by reason; exits 1 when anything failed."""
    from faceshard.errors import StorageError
    from faceshard.storage.status import dataset_status

    try:
        info = dataset_status(uri)
    except (StorageError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_status(info)
    if info["failed"] or info.get("failed_videos"):
        raise typer.Exit(1)


def _print_status(info: dict[str, Any]) -> None:
    table = Table(title=f"faceshard status {info.get('uri', '')}", show_header=False)
    for key in ("shards_total", "committed", "failed", "pending", "not_in_manifest", "fingerprint"):
        table.add_row(key, str(info.get(key)))
    for key, value in (info.get("totals") or {}).items():
        table.add_row(key, str(value))
    if info.get("random_weights"):
        table.add_row("[yellow]random weights[/]", ", ".join(info["random_weights"]))
    stdout.print(table)
    failed_shards = info.get("failed_shards") or []
    if failed_shards:
        shards = Table(title="failed shards")
        shards.add_column("shard")
        shards.add_column("error")
        for row in failed_shards:
            shards.add_row(str(row["shard"]), escape(str(row["error"])))
        stdout.print(shards)
    failed = info.get("failed_videos") or []
    if failed:
        errors = Table(title="failed videos")
        for column in ("video_id", "path", "error"):
            errors.add_column(column)
        for row in failed[:50]:
            errors.add_row(*(escape(str(row[key])) for key in ("video_id", "path", "error")))
        stdout.print(errors)


@app.command()
def report(uri: Annotated[str, typer.Argument(help="output URI of a build")]) -> None:
    """What a build produced: per split and method, size buckets, identities per video."""
    from faceshard.report import dataset_report

    stdout.print(dataset_report(uri))


@app.command()
def train(
    uri: Annotated[str, typer.Argument(help="output URI of a build with emb_rgb")],
    train_split: Annotated[str, typer.Option(help="split to fit on")] = "train",
    eval_split: Annotated[str | None, typer.Option(help="split to evaluate on (default: all others)")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Fit a linear probe on cached face embeddings (video-level AUC): the lean consumer of a build."""
    from faceshard.probe import train_probe

    result = train_probe(uri, train_split=train_split, eval_split=eval_split, epochs=epochs, seed=seed)
    print(json.dumps(result, indent=2))


@app.command()
def export(
    uri: Annotated[str, typer.Argument(help="output URI of a build with stored crops")],
    out: Annotated[Path, typer.Option("--out", help="directory for the exported index and frames")],
    clip: Annotated[int, typer.Option(help="frames per clip in the index (DeepfakeBench: 8)")] = 8,
) -> None:
    """Export crops and a DeepfakeBench-style JSON index of frames for clip-based detectors."""
    from faceshard.export import export_deepfakebench

    index = export_deepfakebench(uri, out, clip=clip)
    stdout.print(f"wrote {index}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="where the corpus and the dataset go")] = Path(
        "faceshard-demo"
    ),
    videos: Annotated[int, typer.Option(min=3, help="clips to synthesise")] = 6,
) -> None:
    """Synthesise a small corpus, build it with the demo preset, and print a summary."""
    from faceshard.flows.build import run_build
    from faceshard.progress_bar import BuildProgressBar
    from faceshard.storage.status import dataset_status
    from faceshard.synth import make_corpus

    started = time.perf_counter()
    manifest = make_corpus(out / "corpus", n_videos=videos, seed=0)
    cfg = load_config("demo")
    with BuildProgressBar(console) as bar:
        summary = run_build(str(manifest), str(out / "dataset"), cfg, on_progress=bar)
    info = dataset_status(str(out / "dataset"))
    _print_summary(summary)
    totals = info.get("totals", {})
    stdout.print(
        f"[bold]demo:[/] {totals.get('videos', 0)} videos, {totals.get('faces', 0)} faces, "
        f"{totals.get('identities', 0)} identities in {time.perf_counter() - started:.1f}s "
        f"→ {out / 'dataset'}"
    )
    if info.get("random_weights"):
        stdout.print(
            f"[yellow]random weights:[/] {', '.join(info['random_weights'])} "
            "(hub weights unreachable offline; the demo preset allows random init)"
        )
