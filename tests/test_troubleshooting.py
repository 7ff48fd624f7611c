"""README "Troubleshooting": one test per row. Each bad input, given to the console script in a fresh
process as a user would, ends with its one `error:` line on stderr (no traceback), its documented
exit code, and nothing lost: the output (or the folder named) holds the same bytes afterwards.

The same rows under `--json` print one JSON object `{"error", "code", "kind"}` on stdout instead.
The lease-held and Ctrl-C rows are covered by the start-up/interrupt tests of issue 23's other half.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, faceshard_cli
from typer.testing import CliRunner

from faceshard.app.cli import app
from faceshard.errors import ExitCode
from faceshard.storage.commit import Output
from faceshard.storage.manifest import plan_shards
from faceshard.storage.schema import SCHEMA_VERSION
from faceshard.storage.testing import fake_shard_tables, fake_videos

PLAIN = {"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}
# Rows tests/test_interrupt.py tests (lease before servers, Ctrl-C in a pseudo-terminal); listed in the README table.
ELSEWHERE = {"out-held", "ctrl-c-start-up", "ctrl-c-mid-build"}


def words(text: str) -> str:
    return " ".join(text.split())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: 'nothing lost' is the same snapshot afterwards."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def good_manifest(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.mp4").write_bytes(b"never decoded: every row here is refused before any video is read")
    path = root / "m.csv"
    path.write_text("path,label\na.mp4,0\n")
    return path


def committed_output(root: Path) -> Path:
    out = Output.open(str(root), config={"preset": "tests"}, weights={})
    try:
        plans = plan_shards(fake_videos(2), 2)
        out.set_plan(plans)
        out.commit_shard(plans[0], fake_shard_tables(plans[0]), {})
    finally:
        out.close()
    return root


def older_version_output(root: Path) -> Path:
    """An output as an older faceshard wrote it: another schema version, so another fingerprint."""
    committed_output(root)
    for entry_path in sorted((root / "_faceshard" / "log").glob("*.json")):  # its metadata entry
        entry = json.loads(entry_path.read_text())
        if entry.get("kind") == "metadata":
            entry["metadata"].update(schema_version=1, fingerprint="0123456789abcdef")
            entry_path.write_text(json.dumps(entry))
    return root


def unwritable_folder(tmp: Path) -> Path:
    """A folder this process cannot write: a read-only mode, or (as root, who ignores modes) /proc."""
    if os.geteuid() != 0:
        folder = tmp / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "out"
    folder = Path("/proc/1")
    if os.access(folder, os.W_OK):
        pytest.skip("no unwritable folder found for root on this machine")
    return folder / "faceshard-out"


@dataclass(frozen=True)
class Row:
    """A README troubleshooting row: how to cause it, the exit code, words of its one line."""

    id: str
    args: Callable[[Path], list[str]]
    code: ExitCode | int
    says: tuple[str, ...]
    kept: Callable[[Path], Path] | None = None  # what must be left exactly as it was


def _build(manifest: Callable[[Path], Path | str], out: Callable[[Path], Path | str], *extra: str):
    return lambda tmp: ["build", str(manifest(tmp)), "--out", str(out(tmp)), *extra]


def _out(tmp: Path) -> Path:
    return tmp / "out"


def _manifest(tmp: Path) -> Path:
    return good_manifest(tmp / "corpus")


def _text_manifest(name: str, text: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        good_manifest(tmp / "corpus")
        (tmp / "corpus" / name).write_text(text)
        return tmp / "corpus" / name

    return make


def _file(tmp: Path) -> Path:
    (tmp / "afile").write_text("a user's file, not a folder")
    return tmp / "afile"


def _plain_folder(tmp: Path) -> Path:
    (tmp / "photos").mkdir(exist_ok=True)
    (tmp / "photos" / "holiday.jpg").write_bytes(b"not an output")
    return tmp / "photos"


DRY = ("--preset", "deepfakebench", "--dry-run")  # light weights: dlib files, no hub models
ROWS = [
    Row("manifest-missing", _build(lambda t: t / "nope.csv", _out), 3, ("nope.csv does not exist",)),
    Row("manifest-folder", _build(lambda t: _manifest(t).parent, _out), 3, ("is a folder", "CSV or Parquet")),
    Row("manifest-empty", _build(_text_manifest("e.csv", ""), _out), 3, ("e.csv is empty", "path,label")),
    Row(
        "manifest-no-rows",
        _build(_text_manifest("h.csv", "path,label\n"), _out),
        3,
        ("h.csv lists no videos", "add one row per video"),
    ),
    Row(
        "manifest-columns",
        _build(_text_manifest("c.csv", "file,y\na.mp4,1\n"), _out),
        3,
        ("missing column(s) path, label", "found: file, y"),
    ),
    Row("out-file", _build(_manifest, _file), 3, ("afile is a file, not a folder",), kept=_file),
    Row(
        "out-unwritable",
        _build(_manifest, unwritable_folder),
        3,
        ("cannot be written", "choose a folder you can write"),
    ),
    Row(
        "report-not-output",
        lambda t: ["report", str(_plain_folder(t))],
        3,
        ("not a faceshard output",),
        kept=_plain_folder,
    ),
    Row(
        "repair-not-output",
        lambda t: ["repair", str(_plain_folder(t))],
        3,
        ("not a faceshard output", "nothing to repair"),
        kept=_plain_folder,
    ),
    Row(
        "unknown-preset",
        _build(_manifest, _out, "--preset", "mintme"),
        3,
        ("unknown preset 'mintme'", "did you mean mintime?"),
    ),
    Row(
        "bad-set-value",
        _build(_manifest, _out, "--set", "depth.enabled=maybe"),
        3,
        ("depth.enabled", "valid boolean", "'maybe'"),
    ),
    Row(
        "bad-set-key",
        _build(_manifest, _out, "--set", "detect.treshold=0.5"),
        3,
        ("detect.treshold: unknown setting", "did you mean detect.thresholds?"),
    ),
    Row(
        "other-version",
        _build(_manifest, lambda t: older_version_output(t / "old"), *DRY),
        3,
        (
            "another configuration or faceshard version",
            "new output path",
            "--rebuild",
            f"schema_version: 1 → {SCHEMA_VERSION}",
        ),
        kept=lambda t: t / "old",
    ),
    Row(
        "damaged-metadata",
        lambda t: ["status", str(_damaged(t))],
        5,
        ("_faceshard.json", "is invalid", "faceshard repair"),
        kept=lambda t: t / "damaged",
    ),
    Row(
        "weights-missing",
        _build(
            _manifest,
            _out,
            "--preset",
            "mintime",
            "--set",
            "identity.weights=/nowhere/vggface2.pt",
            "--dry-run",
        ),
        6,
        ("/nowhere/vggface2.pt", "identity.weights", "faceshard weights"),
    ),
    Row("usage", lambda t: ["build", "--bogus-flag"], 2, ("No such option",)),
]


def _damaged(tmp: Path) -> Path:
    root = tmp / "damaged"
    if not (root / "_faceshard.json").exists() or (root / "_faceshard.json").read_text() != "{":
        committed_output(root)
        (root / "_faceshard.json").write_text("{")
    return root


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_each_bad_input_is_one_line_and_its_exit_code(row: Row, tmp_path: Path) -> None:
    args = row.args(tmp_path)
    kept = row.kept(tmp_path) if row.kept else None
    before = snapshot(kept) if kept else None
    done = faceshard_cli(*args, env=PLAIN, timeout=300)
    assert done.returncode == row.code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    message = words(done.stderr)
    for said in row.says:
        assert said in message, message
    if row.code != ExitCode.USAGE:  # click's own usage message is click's format
        lines = done.stderr.strip().splitlines()
        # the build's first line, printed in its first second (what it builds where), is not an error
        lines = [line for line in lines if line.strip() and not line.startswith("faceshard build ")]
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
    if kept is not None:
        assert snapshot(kept) == before  # nothing lost, nothing changed


@pytest.mark.parametrize("row", [r for r in ROWS if r.id != "usage"], ids=lambda r: r.id)
def test_each_bad_input_under_json_is_one_json_object(row: Row, tmp_path: Path) -> None:
    args = row.args(tmp_path)
    done = CliRunner().invoke(app, [*args, "--json"])
    assert done.exit_code == row.code, done.output
    error = json.loads(done.stdout)
    assert set(error) == {"error", "code", "kind"} and error["code"] == row.code
    assert error["kind"] == ExitCode(row.code).name.lower()
    assert all(said in words(error["error"]) for said in row.says), error


def test_a_usage_error_under_json_is_json_too() -> None:
    done = CliRunner().invoke(app, ["build", "--bogus-flag", "--json"])
    assert done.exit_code == ExitCode.USAGE
    assert json.loads(done.stdout) == {"error": "No such option: --bogus-flag", "code": 2, "kind": "usage"}


def test_verbose_shows_the_traceback_and_still_ends_with_the_line(tmp_path: Path) -> None:
    done = faceshard_cli("status", str(tmp_path / "nothing"), "--verbose", env=PLAIN)
    assert done.returncode == ExitCode.BAD_INPUT
    assert "Traceback" in done.stderr and done.stderr.strip().splitlines()[-1].startswith("error: ")


def test_the_readme_table_has_a_row_for_each_case_with_its_exit_code() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([a-z0-9-]+)`", cells[0]) if len(cells) >= 4 else None
        if match:
            table[match.group(1)] = cells
    assert set(table) == {r.id for r in ROWS} | ELSEWHERE
    for row in ROWS:
        assert table[row.id][2] == str(int(row.code)), table[row.id]
