"""The `faceshard` console script as users run it: help on every command, config errors that exit 3
before anything is written, `synth`, `status` on something that is not an output, `--dry-run`'s
path checks. (Every troubleshooting row: tests/test_troubleshooting.py.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer.main
from conftest import faceshard_cli
from typer.testing import CliRunner

from faceshard.app.cli import app

COMMANDS = ("synth", "manifest", "build", "status", "report", "preview", "train", "export", "demo", "weights")
# No colours, no wrapping: messages are checked as the words a user reads.
PLAIN = {"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}


def words(text: str) -> str:
    return " ".join(text.split())


def test_top_level_help_lists_every_command() -> None:
    done = faceshard_cli("--help", env=PLAIN)
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert command in done.stdout


def every_command() -> list[tuple[str, ...]]:
    """Every command and subcommand of the CLI (`bench build`, …), found from the app itself."""

    def walk(command, path: tuple[str, ...]):
        children = getattr(command, "commands", None)
        if not children:
            return [path]
        return [found for name, child in children.items() for found in walk(child, (*path, name))]

    return walk(typer.main.get_command(app), ())


def test_every_command_is_found_and_listed() -> None:
    found = {path[0] for path in every_command()}
    assert set(COMMANDS) | {"bench"} <= found
    assert ("bench", "build") in every_command() and ("bench", "loader") in every_command()


@pytest.mark.parametrize("path", every_command(), ids=" ".join)
def test_every_command_and_subcommand_says_what_it_does(path: tuple[str, ...]) -> None:
    """`--help` exits 0 with the command's usage line and its whole first sentence (markup in a
    docstring once ate `export`'s), every option and argument has a help text, and `--json` is there."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    done = CliRunner().invoke(app, [*path, "--help"], env=PLAIN, terminal_width=200)
    assert done.exit_code == 0, done.output
    assert f"faceshard {' '.join(path)}" in done.output
    summary = command.help.strip().split("\n\n")[0]
    assert words(summary) in words(done.output), done.output
    assert all(param.help for param in command.params), [p.name for p in command.params if not p.help]
    assert "--json" in [opt for param in command.params for opt in getattr(param, "opts", [])]


def test_the_console_script_prints_help() -> None:
    done = faceshard_cli("export", "--help", env=PLAIN)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "frames/, landmarks/, dataset_json/" in words(done.stdout)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid manifest: a bad config must be refused before the manifest is ever read."""
    root = tmp_path_factory.mktemp("manifest")
    (root / "a.mp4").write_bytes(b"not decoded: the build never starts")
    path = root / "m.csv"
    path.write_text("path,label,method,split\na.mp4,0,,train\n")
    return path


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "detect.bogus=1"], "detect.bogus"),
        (["--set", "depth.enabled=maybe"], "depth.enabled"),
        (["--preset", "nope"], "preset 'nope'"),
        (["--set", "identity.metric=cosine"], "identity.threshold"),
    ],
    ids=["unknown-key", "bad-bool", "unknown-preset", "metric-without-threshold"],
)
def test_bad_config_exits_3_with_one_message_and_writes_nothing(
    manifest: Path, tmp_path: Path, args: list[str], named: str
) -> None:
    out = tmp_path / "X"
    done = faceshard_cli("build", str(manifest), "--out", str(out), *args, env=PLAIN)
    assert done.returncode == 3, done.stdout + done.stderr
    message = words(done.stderr)
    assert message.count("error:") == 1 and named in message, message
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_unreadable_yaml_config_exits_3_naming_the_file(manifest: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("detect:\n  thresholds: [0.6, 0.7\n  keep: all\n")
    out = tmp_path / "X"
    done = faceshard_cli("build", str(manifest), "--out", str(out), "--config", str(config), env=PLAIN)
    assert done.returncode == 3, done.stdout + done.stderr
    message = words(done.stderr)
    assert message.count("error:") == 1 and str(config) in message, message
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_synth_writes_a_manifest_of_the_asked_size(tmp_path: Path) -> None:
    out = tmp_path / "D"
    done = faceshard_cli("synth", "--out", str(out), "--videos", "3", "--seed", "1", env=PLAIN)
    assert done.returncode == 0, done.stderr
    with (out / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["path", "label", "method", "split"]
    assert len(rows) == 3
    for row in rows:
        assert (out / row["path"]).is_file() and (out / row["path"]).stat().st_size > 0
        assert row["label"] in {"0", "1"}


def test_status_of_a_missing_output_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "never-built"
    done = faceshard_cli("status", str(missing), "--json", env=PLAIN)
    assert done.returncode == 3
    error = json.loads(done.stdout)  # one JSON object for a script, nothing else
    assert error["code"] == 3 and error["kind"] == "bad_input"
    assert "not a faceshard output" in error["error"] and str(missing) in error["error"]
    assert done.stderr.strip() == "" and not missing.exists()


def test_error_messages_are_printed_verbatim(tmp_path: Path) -> None:
    missing = tmp_path / "raw[/b]" / "[bold]set"
    done = faceshard_cli("status", str(missing), env=PLAIN)
    assert done.returncode == 3, done.stderr
    assert str(missing) in words(done.stderr) and "Traceback" not in done.stderr


def test_tests_reach_the_real_clips_only_through_conftest() -> None:
    """A user's clone has no ../shared: every test finds the clips through conftest's SHARED_FIXTURES
    (or the `shared_fixtures` fixture), which FACESHARD_FIXTURES redirects and which skips with the
    reason. `FACESHARD_FIXTURES=/nonexistent pytest` is how that clone's run was checked."""
    tests = Path(__file__).parent
    for module in sorted(tests.glob("*.py")):
        if module.name in {"conftest.py", Path(__file__).name}:
            continue
        text = module.read_text()
        assert '"shared"' not in text and "../shared" not in text, f"{module.name} builds its own path"


def test_dry_run_flags_missing_files_and_files_outside_the_roots(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "here.mp4").write_bytes(b"x")
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"x")
    manifest = corpus / "m.csv"
    manifest.write_text(f"path,label\nhere.mp4,0\ngone.mp4,1\n{outside},0\n")
    args = ["build", str(manifest), "--out", str(tmp_path / "out"), "--preset", "deepfakebench", "--dry-run"]
    done = CliRunner().invoke(app, [*args, "--json"])
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    assert plan["missing_files"] == 1 and plan["missing_files_examples"] == [str(corpus / "gone.mp4")]
    assert plan["outside_roots"] == 1 and plan["outside_roots_examples"] == [str(outside)]
    shown = CliRunner().invoke(app, args, env=PLAIN, terminal_width=200)
    assert "1 video(s) do not exist" in words(shown.output) and "add --root DIR" in words(shown.output)
    with_root = CliRunner().invoke(app, [*args, "--json", "--root", str(tmp_path)])
    assert json.loads(with_root.stdout)["outside_roots"] == 0
    assert not (tmp_path / "out").exists()
