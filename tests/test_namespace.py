"""One import package: the wheel installs only `faceshard`, faceshard works beside a user's own
`models/`, `tasks/`, `storage/`, `flows/`, `deployments/` packages, and no module imports a layer above
its own (docs/DESIGN.md, "One package, one way down")."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, faceshard_cli

import faceshard

# Lowest first. A module may import its own layer and any layer below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground",
        ("faceshard", "faceshard.records", "faceshard.config", "faceshard.errors", "faceshard.faults"),
    ),
    ("intake", ("faceshard.intake",)),
    ("storage", ("faceshard.storage",)),
    ("models", ("faceshard.models",)),
    ("tasks", ("faceshard.tasks",)),
    ("flows", ("faceshard.flows",)),
    ("deployments", ("faceshard.deployments",)),
    ("app", ("faceshard.app", "faceshard.training", "faceshard.bench")),
]
CARD_FOLDERS = ("flows", "tasks", "storage", "models", "deployments")
PACKAGE_DIR = Path(faceshard.__file__).parent


def layer_of(module: str) -> int:
    """Index into LAYERS of the most specific prefix naming `module`; unknown modules fail loudly."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            is_match = module == prefix or (prefix != "faceshard" and module.startswith(prefix + "."))
            if is_match and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/DESIGN.md"
    return best


def project_modules() -> dict[str, Path]:
    """Every module under faceshard/, found through the card folders' links as an install sees them."""
    modules = {}
    paths = [Path(d) / f for d, _, files in os.walk(PACKAGE_DIR, followlinks=True) for f in files]
    for path in sorted(p for p in paths if p.suffix == ".py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported_project_modules(module: str, path: Path) -> set[str]:
    """Every `faceshard…` module this file imports, at the top or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base]
        else:
            continue
        found.update(name for name in names if name == "faceshard" or name.startswith("faceshard."))
    return found


def test_every_card_folder_is_a_subpackage_of_faceshard() -> None:
    modules = project_modules()
    for folder in CARD_FOLDERS:
        assert (REPO / folder).is_dir(), f"the design card keeps {folder}/ at the repository's top level"
        assert f"faceshard.{folder}" in modules


def test_no_module_imports_a_layer_above_its_own() -> None:
    modules = project_modules()
    assert len(modules) > 30, "the walk must see the card folders through faceshard/"
    upward = []
    for module, path in modules.items():
        own = layer_of(module)
        for target in imported_project_modules(module, path):
            if layer_of(target) > own:
                upward.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_ground_floor_imports_nothing_of_the_project() -> None:
    modules = project_modules()
    for module in LAYERS[0][1]:
        assert not imported_project_modules(module, modules[module]), (
            f"{module} must import no project module"
        )


def test_no_module_imports_a_bare_card_folder_name() -> None:
    """`import tasks` would resolve to whatever `tasks` a user has first on sys.path."""
    offenders = []
    for module, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{module}: {n}" for n in names if n.split(".")[0] in CARD_FOLDERS]
    assert not offenders


def test_wheel_holds_only_the_faceshard_package(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "--target", "wheel", "--directory", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("faceshard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"faceshard"}
    for folder in CARD_FOLDERS:  # the links were followed: the code itself is inside
        assert f"faceshard/{folder}/__init__.py" in names
    assert "faceshard/tasks/pipeline.py" in names
    assert "faceshard/presets/mintime.yaml" in names


@pytest.fixture
def shadowing_dir(tmp_path: Path) -> Path:
    """A training repository with its own packages named like the card's folders, all of which raise."""
    for folder in CARD_FOLDERS:
        package = tmp_path / folder
        package.mkdir()
        (package / "__init__.py").write_text(
            f"raise ImportError('the user\\'s own {folder} package was imported')\n"
        )
    return tmp_path


def test_faceshard_imports_and_runs_beside_a_users_own_packages(shadowing_dir: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(shadowing_dir)}
    probe = (
        "import importlib\n"
        f"for name in {sorted(project_modules())!r}: importlib.import_module(name)\n"
        "print('imported every faceshard module')\n"
        "try:\n    import tasks\nexcept ImportError as error:\n    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=shadowing_dir, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    # The user's own `tasks` is the one a bare import finds, and faceshard never asked for it.
    assert done.stdout.splitlines() == [
        "imported every faceshard module",
        "the user's own tasks package was imported",
    ]


@pytest.mark.slow
def test_cli_builds_beside_a_users_own_packages(shadowing_dir: Path) -> None:
    """`--help` and a real build (Prefect + Ray workers started from that directory) work there."""
    env = {"PYTHONPATH": str(shadowing_dir), "NO_COLOR": "1"}
    assert faceshard_cli("--help", env=env, cwd=shadowing_dir).returncode == 0
    corpus = shadowing_dir / "corpus"
    done = faceshard_cli("synth", "--out", str(corpus), "--videos", "2", env=env, cwd=shadowing_dir)
    assert done.returncode == 0, done.stderr
    out = shadowing_dir / "out"
    fast = ["--set", "depth.enabled=false", "--set", "embed.enabled=false"]
    done = faceshard_cli(
        "build", str(corpus / "manifest.csv"), "--out", str(out), *fast, "--json", env=env, cwd=shadowing_dir
    )
    assert done.returncode == 0, done.stdout + done.stderr
    status = faceshard_cli("status", str(out), "--json", env=env, cwd=shadowing_dir)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) | {"committed": 1, "failed": 0, "pending": 0} == json.loads(
        status.stdout
    )
