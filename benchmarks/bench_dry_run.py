"""`faceshard build --dry-run` at ForgeryNet's scale: seconds and peak RSS, and where they go.

Generates a ForgeryNet-shaped manifest (221,247 rows, every file named `video.mp4` in a folder of
its own, no `video_id` column), then measures, each in a fresh process:
  * cli dry-run, fresh output: `faceshard build MANIFEST --out NEW --shard-size 256 --dry-run --json`
    as a user runs it (manifest, weights fingerprinted from their files, plan): the issue's target
    is < 20 s and < 1.5 GB;
  * plan only, fresh output: the same without the weights step (manifest read + checks + plan);
  * plan only, existing output: an output whose recorded plan holds all 865 shards (8 committed),
    planned again with 1,000 more rows: reading the recorded plan back at scale.
Also counts the derived-id collisions of the old scheme (stem + 32 hash bits) and of the new one.

    .venv/bin/python benchmarks/bench_dry_run.py [--rows 221247] [--work /tmp/bench-dry-run]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import polars as pl

ROWS = 221_247
SHARD_SIZE = 256
WEIGHTS = {"stub": {"source": "bench", "fingerprint": "bench-1", "random": False}}

# Runs in the child; prints its own peak RSS (MB) last, whatever the command did.
CHILD_PREFIX = """
import atexit, resource, sys, time
_started = time.perf_counter()
atexit.register(lambda: print(f"BENCH seconds={time.perf_counter() - _started:.2f} "
    f"maxrss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}", file=sys.stderr))
"""

CLI_DRY_RUN = """
from faceshard.app.cli import app
app(["build", MANIFEST, "--out", OUT, "--shard-size", "256", "--dry-run", "--json"])
"""

PLAN_ONLY = """
import json
from faceshard.config import load_config
from faceshard.flows import plan
plan.dataset_weights = lambda cfg: WEIGHTS
print(json.dumps(plan.dry_run(MANIFEST, OUT, load_config("demo", shard_size=256))))
"""


def forgerynet_manifest(path: Path, rows: int, seed: int = 0) -> None:
    """`train_release/<label>/<16 hex>/<8 hex>/video.mp4` rows, ~1/5 real, splits mixed."""
    rng = random.Random(seed)
    labels = [0 if i % 5 == 0 else 1 for i in range(rows)]
    paths = [
        f"train_release/{1 + lab}/{rng.getrandbits(64):016x}/{rng.getrandbits(32):08x}/video.mp4"
        for lab in labels
    ]
    splits = [("train", "val", "test")[rng.randrange(3)] for _ in range(rows)]
    pl.DataFrame({"path": paths, "label": labels, "split": splits}).write_csv(path)


def run_child(code: str, manifest: Path, out: Path) -> tuple[dict, float, float]:
    """Run `code` in a fresh interpreter; (its JSON stdout, seconds, peak RSS MB)."""
    header = f"MANIFEST, OUT, WEIGHTS = {str(manifest)!r}, {str(out)!r}, {WEIGHTS!r}\n"
    done = subprocess.run(
        [sys.executable, "-c", CHILD_PREFIX + header + code],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
        check=False,
    )
    stats = dict(part.split("=") for part in done.stderr.split("BENCH ")[-1].split())
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), float(stats["seconds"]), float(stats["maxrss_mb"])


def old_scheme_collisions(paths: list[str]) -> int:
    ids = [f"video-{hashlib.sha256(p.encode()).hexdigest()[:8]}" for p in paths]
    return sum(n - 1 for n in Counter(ids).values() if n > 1)


def existing_output(manifest: Path, out: Path) -> Path:
    """An output that recorded the whole plan (865 shards) and committed 8 of them; + 1,000 new rows."""
    from faceshard.config import load_config
    from faceshard.flows import plan as planning
    from faceshard.storage.commit import Output
    from faceshard.storage.manifest import load_manifest
    from faceshard.storage.testing import fake_shard_tables

    cfg = load_config("demo", shard_size=SHARD_SIZE)
    videos = load_manifest(str(manifest))
    output = Output.open(str(out), config=cfg, weights=WEIGHTS)
    plan = planning.plan_output(output, videos, cfg, prune=False)
    output.apply_plan(plan)
    for shard in planning.shards_to_run(output, videos, plan, False)[:8]:
        output.commit_shard(shard, fake_shard_tables(shard, faces_per_video=1), {})
    grown = manifest.with_name("grown.csv")
    extra = [f"dfdc/part_{i // 100}/{i:06d}.mp4,1,train" for i in range(1000)]
    grown.write_text(manifest.read_text() + "\n".join(extra) + "\n")
    return grown


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--skip-cli", action="store_true", help="skip the run that loads the models")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dry-run-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = work / "forgerynet.csv"
    forgerynet_manifest(manifest, args.rows)
    paths = pl.read_csv(manifest)["path"].to_list()
    print(
        f"manifest: {args.rows:,} rows, {len(set(paths)):,} distinct paths, file names {set(p.rsplit('/', 1)[-1] for p in paths)}"
    )
    started = time.perf_counter()
    print(
        f"derived-id collisions: old stem+32-bit scheme {old_scheme_collisions(paths)}, new scheme (relative path) 0 by construction"
    )

    rows = []
    if not args.skip_cli:
        plan, seconds, rss = run_child(CLI_DRY_RUN, manifest, work / "fresh")
        rows.append(("cli dry-run, fresh output", plan, seconds, rss))
    plan, seconds, rss = run_child(PLAN_ONLY, manifest, work / "fresh")
    rows.append(("plan only, fresh output", plan, seconds, rss))
    grown = existing_output(manifest, work / "existing")
    plan, seconds, rss = run_child(PLAN_ONLY, grown, work / "existing")
    rows.append(("plan only, existing 865-shard output +1000 rows", plan, seconds, rss))
    assert not (work / "fresh").exists(), "a dry-run wrote its output"

    print(
        f"{'case':50s} {'seconds':>8s} {'peak MB':>8s}  videos shards pending to_process skipped not_in_manifest"
    )
    for name, plan, seconds, rss in rows:
        counts = [
            plan[k]
            for k in ("videos", "shards", "pending", "videos_to_process", "videos_skipped", "not_in_manifest")
        ]
        print(f"{name:50s} {seconds:8.2f} {rss:8.0f}  {' '.join(str(c) for c in counts)}")
    print(
        f"(bench wall {time.perf_counter() - started:.1f} s; target for the cli dry-run: < 20 s, < 1500 MB)"
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
