"""The README's examples run, so they cannot drift from the code.

Every fenced block marked bash or python is run in README order, in one temporary folder (the
working directory, so `corpus`, `./out`, `more.csv` mean what they mean to a reader): each
`faceshard …` line in-process on the session's Prefect server and Ray cluster, each python block with
`exec`. What cannot run here as written is changed by the explicit, reasoned substitutions below
and nothing else; `make` lines are replaced or skipped with their reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO, faceshard_cli
from test_intake import ffpp_tree
from typer.testing import CliRunner

from faceshard.app.cli import app

README = REPO / "README.md"

# (as written, as run, why)
SUBSTITUTIONS = [
    (
        "s3://bucket/ff++",
        "ff++",
        "a local folder: the session's Ray workers start before a moto S3 server could be named in their"
        " environment (S3 builds are tested by tests/test_storage_s3.py)",
    ),
    (
        "/data/FF++",
        "FF++",
        "a stand-in FF++ tree of empty files (test_intake.ffpp_tree), made before the line",
    ),
    ("--videos 20", "--videos 8", "runtime: 8 clips are enough for every line below (train/val splits)"),
    (
        "--preset megatron",
        "--preset megatron --set runtime.allow_random_weights=true",
        "offline: the Depth Anything and RepViT hub weights are absent (`faceshard weights` says so)",
    ),
    ("--set depth.input_size=336", "--set depth.input_size=56", "runtime: Depth Anything on 2 CPU cores"),
    ("--epochs 10", "--epochs 2", "runtime"),
    ("--rows 1000000 --out /tmp/bench", "--rows 2000 --out bench", "runtime; inside the test's folder"),
    (
        "preview a.mp4 b.mp4 --preset mintime",
        "preview corpus/videos/synth_000.mp4 corpus/videos/synth_001.mp4 --preset mintime"
        " --set runtime.allow_random_weights=true",
        "two clips of the synthetic corpus made above; offline: FaceNet's weights are absent",
    ),
    (
        "--run-from ~/DeepfakeBench",
        "--run-from .",
        "no DeepfakeBench checkout here: paths relative to the test's folder",
    ),
    (
        "make demo",
        "faceshard demo --out faceshard-demo --videos 3",
        "`make demo` is `make setup` (uv sync:"
        " network, and the shared environment) then this; 3 clips for runtime",
    ),
]
NOT_RUN = {"make test": "it is this test suite"}
# Run as the console script in a fresh process instead of in-process: its DataLoader forks workers,
# and a fork of this test process (which runs Ray) dies.
FRESH_PROCESS = ("faceshard bench ",)
# Lines whose documented exit is not 0 on this machine.
EXIT = {"faceshard weights --preset mintime --check": {0, 6}}  # 6: FaceNet/EfficientNet absent offline


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def readme_steps() -> list[tuple[str, str]]:
    """("shell", one command line) and ("python", one block), in README order."""
    steps: list[tuple[str, str]] = []
    for language, text in readme_blocks():
        if language == "python":
            steps.append(("python", text))
        elif language in ("bash", "sh", "shell"):
            for line in text.replace("\\\n", " ").splitlines():
                command = re.sub(r"\s+#\s.*$", "", line).strip()
                if command:
                    steps.append(("shell", " ".join(command.split())))
        else:
            assert not re.search(r"^\s*(faceshard|make|python) ", text, re.M), f"untested code block:\n{text}"
    return steps


def substitute(command: str) -> str:
    for written, run, _ in SUBSTITUTIONS:
        command = command.replace(written, run)
    return command


def test_the_readme_has_the_examples_this_test_runs() -> None:
    steps = readme_steps()
    shell = [text for kind, text in steps if kind == "shell"]
    assert sum(kind == "python" for kind, _ in steps) >= 1 and len(shell) >= 15
    used = {written for written, _, _ in SUBSTITUTIONS if any(written in line for line in shell)}
    assert used == {written for written, _, _ in SUBSTITUTIONS}, "a substitution no longer matches the README"
    assert all(line.startswith(("faceshard ", "make ")) for line in shell), shell


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, local_runtime):
    """The reader's working directory, with the stand-ins the substitutions name."""
    root = tmp_path_factory.mktemp("readme")
    ffpp_tree(root / "FF++", {"": [["000", "003"]]})
    before = Path.cwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(before)


def _more_csv(root: Path) -> None:
    """`more.csv`: the corpus manifest seen from the working directory, plus one clip more."""
    lines = (root / "corpus" / "manifest.csv").read_text().splitlines()
    rows = [",".join([f"corpus/{line.split(',', 1)[0]}", line.split(",", 1)[1]]) for line in lines[1:]]
    (root / "more.csv").write_text("\n".join([lines[0], *rows, "corpus/extra.mp4,1,,train"]) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "text"), readme_steps(), ids=lambda v: v.split("\n")[0][:60])
def test_readme_example_runs(kind: str, text: str, workdir: Path) -> None:
    if kind == "python":
        exec(compile(text, "README.md", "exec"), {"__name__": "readme"})
        return
    if text in NOT_RUN:
        pytest.skip(NOT_RUN[text])
    command = substitute(text)
    if "more.csv" in command:
        _more_csv(workdir)
    argv = shlex.split(command)
    assert argv[0] == "faceshard", command
    if command.startswith(FRESH_PROCESS):
        ran = faceshard_cli(*argv[1:], cwd=workdir, timeout=600)
        code, stdout, output = ran.returncode, ran.stdout, ran.stdout + ran.stderr
    else:
        done = CliRunner().invoke(app, argv[1:])
        code, stdout, output = done.exit_code, done.stdout, done.output
    assert code in EXIT.get(text, {0}), f"{command}\n{output}"
    if "--json" in argv:
        json.loads(stdout)
    assert "Traceback" not in output
