"""`faceshard`: the front door (synth, manifest, build, status, report, preview, train, export, bench, demo)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from faceshard.app.cli_errors import FrontDoorGroup, fail
from faceshard.bench import app as bench_app
from faceshard.config import PRESETS, BuildConfig, ConfigError, load_config
from faceshard.errors import ExitCode

app = typer.Typer(
    name="faceshard",
    help=(
        "One-pass, resumable face preprocessing for video deepfake-detection datasets."
        "\n\nAn error is one line on stderr (a JSON object on stdout with --json) and exit code 3 (bad"
        " input), 4 (output busy), 5 (damaged output: faceshard repair), 6 (weights missing: faceshard"
        " weights) or 130 (interrupted); 2 is a usage error, 1 a command that ran and reports failures."
        " Add --verbose anywhere for the traceback."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=FrontDoorGroup,
)
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)
stdout = Console()


def _fail(message: str, code: ExitCode | None = None) -> NoReturn:
    """Refuse with one line (faceshard.app.cli_errors prints it and picks the exit code)."""
    fail(message, code)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="directory to write clips, truth and manifest.csv")],
    videos: Annotated[int, typer.Option("--videos", min=1, max=1000, help="number of clips")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="same seed, same corpus")] = 0,
    sources: Annotated[
        int,
        typer.Option(
            "--sources",
            min=0,
            max=100,
            help="FF++-shaped instead: N source clips with 4 aligned fakes each and 3 misaligned ones,"
            " linked by the manifest's source column",
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print what was written as JSON")] = False,
) -> None:
    """Generate a labelled synthetic corpus from real face photos shipped in installed packages."""
    from faceshard.app.synth import make_corpus, make_ffpp_corpus

    if sources:
        manifest = make_ffpp_corpus(out, n_sources=sources, seed=seed)
        stdout.print(f"wrote {sources} source clips, their fakes and {manifest}")
        return
    manifest = make_corpus(out, n_videos=videos, seed=seed)
    if as_json:
        print(json.dumps({"manifest": str(manifest), "videos": videos, "seed": seed}))
        return
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
    as_json: Annotated[bool, typer.Option("--json", help="print what was written as JSON")] = False,
) -> None:
    from faceshard.errors import ManifestError
    from faceshard.intake import SPLIT_MODES, build_manifest, outside, write_manifest

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
    if as_json:
        counts = intake.frame.group_by("split", "label").len().sort("split", "label").to_dicts()
        summary = {"manifest": str(written), "videos": len(intake.frame), "by_split_label": counts}
        summary["notes"] = list(intake.notes)
        summary["outside_manifest_dir"] = bool(outside(intake, written))
        print(json.dumps(summary, indent=2))
        return
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
    wait: Annotated[
        float,
        typer.Option(min=0, help="seconds to wait while another build holds the output (default: exit)"),
    ] = 0.0,
) -> None:
    """Build (or resume) a dataset: decode, detect, crop, cluster, embed, commit Parquet shards.

    Videos already committed in the output (by video_id) are skipped wherever they sit in the
    manifest; new ones go to new shards; rows of videos missing from the manifest stay (reported as
    not_in_manifest) unless --prune.
    """
    started = time.perf_counter()
    if not dry_run:  # the first line at once: the rest of start-up is told phase by phase
        console.print(f"faceshard build {escape(manifest)} → {escape(out)}", highlight=False)
    cfg = resolve_build_config(preset, config, set_, shard_size)
    from faceshard.storage.fsio import absolute_uri, check_writable_folder

    check_writable_folder(out)
    out = absolute_uri(out)  # the workers resolve paths in their own working directory
    from faceshard.errors import StorageError
    from faceshard.flows.plan import dry_run as plan_only
    from faceshard.models.registry import WeightsUnavailableError

    options = {"rebuild": rebuild, "retry_failed": retry_failed, "roots": root, "prune": prune}
    try:
        if dry_run:
            plan = plan_only(manifest, out, cfg, **options)
            if as_json:
                print(json.dumps(plan, indent=2))
            else:
                _print_plan(plan)
            return
        summary = _build_with_progress(manifest, out, cfg, options, wait, started)
    except (StorageError, WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    _print_warnings(summary)
    if summary["failed_shards"]:
        raise typer.Exit(1)


def _build_with_progress(
    manifest: str, out: str, cfg: BuildConfig, options: dict[str, Any], wait: float, started: float
) -> dict[str, Any]:
    """`run_build` with its phases and progress on stderr and Ctrl-C handled: the first stops the
    submitting and lets running shards commit, a second abandons them; either exits 130 with one line.
    """
    import shlex
    import sys

    from faceshard.app.progress_bar import BuildProgressBar
    from faceshard.flows import interrupt
    from faceshard.flows.interrupt import BuildInterrupted, Interrupts
    from faceshard.flows.local import run_build
    from faceshard.flows.runtime import StartupError

    resume = shlex.join(["faceshard", *sys.argv[1:]])
    with BuildProgressBar(console) as bar:

        def on_signal(count: int) -> None:
            if count == 1:
                bar.line(
                    "stopping: nothing more is submitted; running shards finish (Ctrl-C again to abandon them)"
                )
            elif count == 2:
                bar.line("abandoning the running shards")

        try:
            with interrupt.handling(Interrupts(on_signal)) as interrupts:
                return run_build(
                    manifest, out, cfg, **options, wait_s=wait, on_progress=bar, on_phase=bar.phase,
                    interrupts=interrupts, started=started,
                )  # fmt: skip
        except BuildInterrupted as stopped:
            bar.__exit__(None, None, None)
            done = (
                f"{stopped.committed} of {stopped.total} shards committed"
                if stopped.committed is not None
                else "nothing was written"
            )
            console.print(
                f"interrupted: {done}; resume with: {escape(resume)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except StartupError as exc:
            _fail(str(exc))


def _print_plan(plan: dict[str, Any]) -> None:
    table = Table(title="faceshard build --dry-run (nothing processed or written)", show_header=False)
    for key, value in plan.items():
        if key != "dry_run" and not key.endswith("_examples"):
            table.add_row(key, escape(str(value)))
    stdout.print(table)
    problems = {
        "missing_files": "do not exist",
        "outside_roots": "lie outside the allowed roots (never opened; add --root DIR)",
    }
    for key, what in problems.items():
        if plan.get(key):
            shown = ", ".join(plan.get(f"{key}_examples", []))
            console.print(
                f"[yellow]warning:[/] {plan[key]} video(s) {what}; they would become error rows: {escape(shown)}"
            )


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="faceshard build", show_header=False)
    keys = ("shards_total", "processed", "skipped", "videos_total", "videos_processed", "videos_skipped")
    for key in (*keys, "not_in_manifest", "faces", "identities", "seconds", "startup_seconds"):
        table.add_row(key, str(summary.get(key)))
    table.add_row("video status", ", ".join(f"{k}={v}" for k, v in sorted(summary["status_counts"].items())))
    table.add_row("failed shards", str(len(summary["failed_shards"])))
    table.add_row("fingerprint", summary["fingerprint"])
    if summary.get("random_weights"):
        table.add_row("[yellow]random weights[/]", ", ".join(summary["random_weights"]))
    stdout.print(table)


def _print_warnings(summary: dict[str, Any]) -> None:
    """The build's warnings, each once, on stderr (with --json too: they are in the JSON as well)."""
    for warning in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}")


@app.command()
def status(
    uri: Annotated[str, typer.Argument(help="output URI of a build")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="re-read every committed file's footer: row count and size")
    ] = False,
) -> None:
    """Committed / failed / pending shards, failed videos by reason; exits 1 when anything failed
    or a record or file cannot be vouched for."""
    from faceshard.errors import StorageError
    from faceshard.storage.status import dataset_status

    try:
        info = dataset_status(uri, verify=verify)
    except (StorageError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_status(info)
    if not info["ok"]:
        raise typer.Exit(1)


def _print_status(info: dict[str, Any]) -> None:
    table = Table(title=f"faceshard status {info.get('uri', '')}", show_header=False)
    for key in ("shards_total", "committed", "failed", "pending", "not_in_manifest", "fingerprint"):
        table.add_row(key, str(info.get(key)))
    for key, value in (info.get("totals") or {}).items():
        table.add_row(key, str(value))
    if info.get("random_weights"):
        table.add_row("[yellow]random weights[/]", ", ".join(info["random_weights"]))
    holder = info.get("lease")
    if holder:
        table.add_row(
            "lease", escape(f"{holder.get('state')}: {holder.get('holder') or holder.get('error')}")
        )
    stdout.print(table)
    for problem in [*(info.get("problems") or []), *(info.get("corrupt_files") or [])]:
        stdout.print(f"[red]cannot vouch for[/] {escape(str(problem))}")
    if info.get("unvouched_shards"):
        stdout.print(f"[red]shards not vouched for:[/] {info['unvouched_shards']}")
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
def repair(
    uri: Annotated[str, typer.Argument(help="output URI of a build")],
    wait: Annotated[float, typer.Option(min=0, help="seconds to wait while a build holds the output")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the actions taken as JSON")] = False,
) -> None:
    """Make an output with damaged metadata usable again; what cannot be read is set aside, never deleted."""
    from faceshard.errors import StorageError
    from faceshard.storage.repair import repair_output

    try:
        result = repair_output(uri, wait_s=wait)
    except StorageError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    if not result["actions"] and not result["left"]:
        stdout.print("nothing to repair")
        return
    for action in result["actions"]:
        stdout.print(f"- {escape(action)}")
    for item in result["left"]:
        stdout.print(f"[yellow]left for you:[/] {escape(item)}")


@app.command()
def report(
    uri: Annotated[str, typer.Argument(help="output URI of a build")],
    html: Annotated[
        Path | None,
        typer.Option("--html", help="write one self-contained HTML page (plots, contact sheets, failures)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the same numbers as JSON")] = False,
) -> None:
    """What a build produced: per split and method, size buckets, identities per video."""
    from faceshard.errors import StorageError

    try:
        if html is None:
            from faceshard.app.report import dataset_report, report_data

            if as_json:
                print(json.dumps(report_data(uri), indent=2, default=str))
            else:
                stdout.print(dataset_report(uri))
            return
        from faceshard.app.report_html import write_report

        started = time.perf_counter()
        summary = write_report(uri, str(html))
    except (StorageError, FileNotFoundError) as exc:
        _fail(str(exc))
    stdout.print(
        f"wrote {escape(str(html))}: {summary.status['totals']['videos']} videos,"
        f" {len(summary.status['failed_videos'])} failed, in {time.perf_counter() - started:.1f}s"
    )


@app.command()
def preview(
    videos: Annotated[list[Path], typer.Argument(help="video files to try the settings on", exists=True)],
    preset: Annotated[str, typer.Option(help=f"one of {', '.join(PRESETS)}")] = "demo",
    config: Annotated[Path | None, typer.Option(help="YAML file merged over the preset")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="dotted override, e.g. detect.keep=largest (repeatable)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="directory for one PNG (and JSON) per video")] = Path(
        "faceshard-preview"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="print the written files as JSON")] = False,
) -> None:
    """What a build would detect, crop and cluster on a few videos, drawn; writes no output.

    Runs the build's own per-video code with these settings (depth and embeddings off: they change no
    box or identity) and writes per video a PNG of sampled frames with boxes coloured by identity, the
    crops per identity, size buckets and what was dropped and why, plus the same as JSON.
    """
    cfg = resolve_build_config(preset, config, set_, None)
    from faceshard.app.preview import preview_videos
    from faceshard.models.registry import WeightsUnavailableError

    try:
        written = preview_videos([str(v) for v in videos], cfg, out)
    except (WeightsUnavailableError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({"written": [str(path) for path in written]}))
        return
    for path in written:
        stdout.print(f"wrote {escape(str(path))}")


@app.command()
def train(
    uri: Annotated[str, typer.Argument(help="output URI of a build")],
    model: Annotated[
        str, typer.Option(help="mintime | megatron | probe (linear probe on pooled emb_rgb)")
    ] = "mintime",
    epochs: Annotated[int, typer.Option(min=1, help="epochs (probe: full-batch steps)")] = 10,
    out: Annotated[Path | None, typer.Option("--out", help="directory for the per-epoch checkpoint")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the checkpoint in --out")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    train_split: Annotated[str, typer.Option(help="split to fit on")] = "train",
    val_split: Annotated[
        list[str] | None, typer.Option(help="split(s) to validate on (default: val, else all others)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="videos per training step")] = 8,
    lr: Annotated[float, typer.Option(min=0, help="AdamW learning rate")] = 3e-4,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers")] = 0,
    seed: Annotated[
        int, typer.Option(help="seed of the data order and the init: same seed, same weights")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one final JSON object")] = False,
) -> None:
    """Train a MINTIME- or Megatron-style model on the cached tokens/embeddings (video-level AUC)."""
    from faceshard.errors import StorageError
    from faceshard.storage.datasets import MissingColumnsError
    from faceshard.training.loop import MODELS, TrainingError, TrainSettings
    from faceshard.training.loop import train as run_training

    if model not in MODELS:
        _fail(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device must be auto, cpu or cuda, got {device!r}")
    try:
        if model == "probe":
            result = _train_probe(uri, train_split, val_split, epochs, seed)
        else:
            settings = TrainSettings(
                model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, train_split=train_split,
                val_splits=val_split, device=device, workers=workers,
            )  # fmt: skip
            report = None if as_json else lambda record: console.print(_epoch_line(record))
            result = run_training(uri, settings, out=out, resume=resume, on_epoch=report)
    except (MissingColumnsError, TrainingError, StorageError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    table = Table(title=f"faceshard train --model {model}", show_header=False)
    for key in ("epochs", "train_loss", "val_auc", "val_accuracy", "val_videos", "device", "checkpoint"):
        table.add_row(key, _fmt(result.get(key)))
    for method, metrics in (result.get("val_per_method") or {}).items():
        table.add_row(f"val {method}", f"auc {_fmt(metrics['auc'])}, accuracy {_fmt(metrics['accuracy'])}")
    if result.get("random_weights"):
        table.add_row("[yellow]random weights[/]", ", ".join(result["random_weights"]))
    stdout.print(table)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _epoch_line(record: dict[str, Any]) -> str:
    return (
        f"epoch {record['epoch']}: train_loss {_fmt(record['train_loss'])}, val_auc {_fmt(record.get('val_auc'))},"
        f" val_accuracy {_fmt(record.get('val_accuracy'))} ({record['seconds']:.1f}s)"
    )


def _train_probe(
    uri: str, train_split: str, val_split: list[str] | None, epochs: int, seed: int
) -> dict[str, Any]:
    """The linear probe, reported with the same keys as the sequence models."""
    from faceshard.app.probe import train_probe

    if val_split and len(val_split) > 1:
        _fail("--model probe validates on one --val-split")
    probe = train_probe(uri, train_split, val_split[0] if val_split else None, epochs=epochs, seed=seed)
    evaluation = probe.get("eval", {})
    return {
        "model": "probe",
        "epochs": epochs,
        "train_loss": probe["train"]["loss"],
        "val_auc": evaluation.get("auc"),
        "val_accuracy": evaluation.get("accuracy"),
        "val_videos": evaluation.get("videos", 0),
        "val_splits": evaluation.get("splits", []),
        "random_weights": probe["random_weights"],
        **probe,
    }


@app.command()
def export(
    uri: Annotated[str, typer.Argument(help="output URI of a build with stored crops")],
    out: Annotated[Path, typer.Option("--out", help="directory for the exported frames, landmarks and JSON")],
    run_from: Annotated[
        Path | None,
        typer.Option(help="directory DeepfakeBench runs from (its checkout); frame paths are relative to it"),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="DeepfakeBench dataset name for datasets it has no layout for")
    ] = None,
    compression: Annotated[
        str | None, typer.Option(help="FF++ compression level key (default: read from each video's path)")
    ] = None,
    landmarks_model: Annotated[
        Path | None,
        typer.Option(
            help="DeepfakeBench's shape_predictor_81_face_landmarks.dat (default: looked for in "
            "<run-from>/preprocessing/dlib_tools, then $XDG_CACHE_HOME/faceshard; else 68 points)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print what was written as JSON")] = False,
) -> None:
    """Export crops as DeepfakeBench's preprocessing lays them out: frames/, landmarks/, dataset_json/ (and FF++ masks/)."""
    from faceshard.app.export import export_deepfakebench
    from faceshard.errors import StorageError

    try:
        result = export_deepfakebench(
            uri,
            out,
            run_from=run_from,
            dataset=dataset,
            compression=compression,
            landmarks_model=landmarks_model,
        )
    except (ValueError, StorageError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        stdout.print(
            f"wrote {', '.join(result['datasets']) or 'no dataset'} under {result['dataset_json_folder']} "
            f"({result['videos']} videos, {result['frames']} frames, "
            f"{result['frames_dropped_no_face_in_crop']} dropped: no face in the aligned crop)"
        )
        stdout.print(f"run DeepfakeBench from {result['run_from']}; see {result['readme']}")
        if result["videos_with_masks"]:
            stdout.print(
                f"masks: {result['masks']} of {result['videos_with_masks']} videos "
                f"({result['frames_dropped_mask_ended']} frames left out: past the end of their mask video)"
            )
        if result["landmarks_note"]:
            console.print(f"[yellow]note:[/] {escape(result['landmarks_note'])}")
        for problem in result["mask_problems"]:
            console.print(f"[yellow]mask not written:[/] {escape(problem)}")
        for difference in result["differs_from_deepfakebench"]:
            console.print(f"[yellow]not DeepfakeBench's preprocessing:[/] {escape(difference)}")
        if result["label_dict_to_add"]:
            stdout.print(f"add to DeepfakeBench's label_dict: {json.dumps(result['label_dict_to_add'])}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="where the corpus and the dataset go")] = Path(
        "faceshard-demo"
    ),
    videos: Annotated[int, typer.Option(min=3, help="clips to synthesise")] = 6,
    as_json: Annotated[bool, typer.Option("--json", help="print the build summary as JSON")] = False,
) -> None:
    """Synthesise a small corpus, build it with the demo preset, and print a summary."""
    from faceshard.app.progress_bar import BuildProgressBar
    from faceshard.app.synth import make_corpus
    from faceshard.flows.local import run_build
    from faceshard.storage.status import dataset_status

    started = time.perf_counter()
    out = out.resolve()  # the workers resolve paths in their own working directory
    manifest = make_corpus(out / "corpus", n_videos=videos, seed=0)
    cfg = load_config("demo")
    with BuildProgressBar(console) as bar:
        summary = run_build(str(manifest), str(out / "dataset"), cfg, on_progress=bar, on_phase=bar.phase)
    info = dataset_status(str(out / "dataset"))
    if as_json:
        print(
            json.dumps(
                {**summary, "dataset": str(out / "dataset"), "totals": info.get("totals", {})}, indent=2
            )
        )
    else:
        _print_demo(summary, info, out, time.perf_counter() - started)
    if summary["failed_shards"]:
        raise typer.Exit(ExitCode.FAILED)


def _print_demo(summary: dict[str, Any], info: dict[str, Any], out: Path, seconds: float) -> None:
    _print_summary(summary)
    _print_warnings(summary)
    totals = info.get("totals", {})
    stdout.print(
        f"[bold]demo:[/] {totals.get('videos', 0)} videos, {totals.get('faces', 0)} faces, "
        f"{totals.get('identities', 0)} identities in {seconds:.1f}s "
        f"→ {out / 'dataset'}"
    )


@app.command()
def weights(
    preset: Annotated[
        list[str] | None,
        typer.Option(help=f"preset(s) to check (repeatable; default all: {', '.join(PRESETS)})"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file merged over each preset, as in build")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="dotted override, as in build (e.g. identity.weights=FILE)"),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="exit 6 when a preset cannot run as configured on this machine")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Which weights each preset needs, where faceshard looks, whether they are here, how to provide them.

    Nothing is downloaded or loaded. A weight is present, random (missing; the preset allows a seeded
    random init, outputs marked random), download (missing; the hub is reachable, the first build
    fetches it) or missing (the build would refuse: the line says where to put it).
    """
    from faceshard.app.weights import cache_locations, weights_report

    names = preset or list(PRESETS)
    reports = [weights_report(resolve_build_config(name, config, set_, None)) for name in names]
    blocked = [r["preset"] for r in reports if not r["can_run"]]
    if as_json:
        print(json.dumps({"caches": cache_locations(), "presets": reports, "can_run": not blocked}, indent=2))
    else:
        _print_weights(reports, cache_locations())
    if check and blocked:
        if not as_json:
            console.print(
                f"error: {', '.join(blocked)} cannot run as configured on this machine: provide the missing"
                " weights above (or --set runtime.allow_random_weights=true for a demo)",
                markup=False,
                highlight=False,
            )
        raise typer.Exit(ExitCode.NO_WEIGHTS)


def _print_weights(reports: list[dict[str, Any]], caches: dict[str, str]) -> None:
    colour = {
        "present": "green",
        "random": "yellow",
        "download": "cyan",
        "missing": "red",
        "fallback": "yellow",
    }
    table = Table(title="faceshard weights (nothing downloaded)")
    for column in ("preset", "role", "model", "status", "where"):
        table.add_column(column)
    for report in reports:
        for row in report["weights"]:
            where = row["source"] or row.get("how", "")
            status = row["status"]
            table.add_row(
                report["preset"],
                row["role"],
                escape(row["model"]),
                f"[{colour[status]}]{status}[/]",
                escape(where),
            )
        table.add_section()
    stdout.print(table)
    stdout.print(
        f"looked in: Hugging Face cache {escape(caches['huggingface_cache'])}, torch checkpoints "
        f"{escape(caches['torch_checkpoints'])}, the installed packages; HF_HUB_OFFLINE={caches['hub_offline']}"
    )


@bench_app.command("loader")  # on the `bench` sub-app of faceshard.bench, beside `bench build`
def bench_loader(
    rows: Annotated[
        int, typer.Option("--rows", min=1, help="synthetic face rows to write and stream")
    ] = 1_000_000,
    out: Annotated[
        Path, typer.Option("--out", help="directory for the synthetic output (must be new or empty)")
    ] = Path("faceshard-bench-loader"),
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="rows per DataLoader batch")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Training-loader rows/s against a plain pyarrow scan of the same committed files, same run."""
    from faceshard.errors import StorageError
    from faceshard.training.bench import bench_loader as run_bench

    try:
        result = run_bench(rows, out, workers=workers, batch_size=batch_size)
    except (StorageError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title="faceshard bench loader", show_header=False)
    for key, value in result.items():
        table.add_row(key, _fmt(value))
    stdout.print(table)
