"""The `faceshard` console script as users run it, in fresh processes: help, config errors that exit 2
before anything is written, `synth`, and `status` on something that is not an output."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import faceshard_cli

COMMANDS = ("synth", "manifest", "build", "status", "report", "train", "export", "demo")
# No colours, no wrapping: messages are checked as the words a user reads.
PLAIN = {"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}


def words(text: str) -> str:
    return " ".join(text.split())


def test_top_level_help_lists_every_command() -> None:
    done = faceshard_cli("--help", env=PLAIN)
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert command in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    done = faceshard_cli(command, "--help", env=PLAIN)
    assert done.returncode == 0, done.stderr
    assert f"faceshard {command}" in done.stdout  # the usage line of this very command
    assert "Traceback" not in done.stderr


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
def test_bad_config_exits_2_with_one_message_and_writes_nothing(
    manifest: Path, tmp_path: Path, args: list[str], named: str
) -> None:
    out = tmp_path / "X"
    done = faceshard_cli("build", str(manifest), "--out", str(out), *args, env=PLAIN)
    assert done.returncode == 2, done.stdout + done.stderr
    message = words(done.stderr)
    assert message.count("error:") == 1 and named in message, message
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_unreadable_yaml_config_exits_2_naming_the_file(manifest: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("detect:\n  thresholds: [0.6, 0.7\n  keep: all\n")
    out = tmp_path / "X"
    done = faceshard_cli("build", str(manifest), "--out", str(out), "--config", str(config), env=PLAIN)
    assert done.returncode == 2, done.stdout + done.stderr
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
    assert done.returncode != 0
    message = words(done.stderr)
    assert "error:" in message and "not a faceshard output" in message and str(missing) in message, message
    assert "Traceback" not in done.stderr
    assert done.stdout.strip() == ""  # no half JSON for a script to misread
    assert not missing.exists()


def test_error_messages_are_printed_verbatim(tmp_path: Path) -> None:
    missing = tmp_path / "raw[/b]" / "[bold]set"
    done = faceshard_cli("status", str(missing), env=PLAIN)
    assert done.returncode == 2, done.stderr
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
