"""`faceshard weights`: what each preset needs, whether it is here, and `--check`'s verdict.

Runs offline (conftest sets HF_HUB_OFFLINE): the hub weights are absent, the packaged ones (MTCNN in
facenet-pytorch's wheel, dlib's models in face_recognition_models) are present. Weights a user
provides are stood in for by tiny files: faceshard fingerprints them by content without loading them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from faceshard.app.cli import app
from faceshard.errors import ExitCode


def run(*args: str):
    return CliRunner().invoke(app, ["weights", *args])


def by_role(report: dict, preset: str) -> dict[str, dict]:
    (entry,) = [p for p in report["presets"] if p["preset"] == preset]
    return {row["role"]: row for row in entry["weights"]}


def test_every_preset_is_listed_with_each_role_it_runs() -> None:
    done = run("--json")
    assert done.exit_code == 0, done.output  # without --check it only reports
    report = json.loads(done.stdout)
    assert [p["preset"] for p in report["presets"]] == ["demo", "mintime", "megatron", "deepfakebench"]
    assert set(by_role(report, "megatron")) == {"detector", "identity", "depth", "embed"}
    assert set(by_role(report, "deepfakebench")) == {"detector", "identity", "export landmarks"}
    demo = by_role(report, "demo")
    assert demo["identity"]["status"] == "present" and "face_recognition_models" in demo["identity"]["source"]
    assert demo["depth"]["status"] == "random"  # the demo preset allows random init, and says so
    assert report["caches"]["huggingface_cache"]


def test_check_fails_for_a_preset_whose_weights_are_missing_and_says_where_to_put_them(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere" / "vggface2.pt"
    done = run("--preset", "mintime", "--set", f"identity.weights={missing}", "--check", "--json")
    assert done.exit_code == ExitCode.NO_WEIGHTS, done.output
    report = json.loads(done.stdout)
    assert report["can_run"] is False
    identity = by_role(report, "mintime")["identity"]
    assert identity["status"] == "missing" and identity["model"] == "facenet"
    assert str(missing) in identity["how"] and "identity.weights" in identity["how"]
    assert identity["default_weights"] == "20180402-114759-vggface2.pt"  # from the registry's card
    embed = by_role(report, "mintime")["embed"]
    assert embed["status"] == "missing" and "embed.checkpoint" in embed["how"]

    plain = run("--preset", "mintime", "--set", f"identity.weights={missing}", "--check")
    assert plain.exit_code == ExitCode.NO_WEIGHTS
    assert "mintime cannot run as configured" in " ".join(plain.output.split())


def test_check_passes_once_the_weights_are_given(tmp_path: Path) -> None:
    facenet = tmp_path / "vggface2.pt"
    facenet.write_bytes(b"stand-in: fingerprinted by content, never loaded here")
    b0 = tmp_path / "b0.pth"
    torch.save({"conv_stem.weight": torch.zeros(1)}, b0)
    sets = ["--set", f"identity.weights={facenet}", "--set", f"embed.checkpoint={b0}"]
    done = run("--preset", "mintime", *sets, "--check", "--json")
    assert done.exit_code == 0, done.output
    roles = by_role(json.loads(done.stdout), "mintime")
    assert {row["status"] for row in roles.values()} == {"present"}
    assert roles["identity"]["source"] == str(facenet) and roles["embed"]["source"] == str(b0)


@pytest.mark.parametrize("preset", ["deepfakebench", "demo"])
def test_check_passes_for_presets_that_run_offline(preset: str) -> None:
    done = run("--preset", preset, "--check")
    assert done.exit_code == 0, done.output


def test_deepfakebench_81_point_model_is_a_fallback_until_the_user_puts_it_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export-only: missing, `faceshard export` writes 68 points (the build and --check are unaffected)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    done = run("--preset", "deepfakebench", "--check", "--json")
    assert done.exit_code == 0, done.output
    row = by_role(json.loads(done.stdout), "deepfakebench")["export landmarks"]
    assert row["status"] == "fallback" and row["model"] == "dlib-81"
    assert "68 points" in row["how"] and str(tmp_path / "faceshard") in row["how"]
    model = tmp_path / "faceshard" / "shape_predictor_81_face_landmarks.dat"
    model.parent.mkdir()
    model.write_bytes(b"stand-in: fingerprinted by content, never loaded here")
    row = by_role(json.loads(run("--preset", "deepfakebench", "--json").stdout), "deepfakebench")[
        "export landmarks"
    ]
    assert (
        row["status"] == "present"
        and row["source"] == str(model)
        and row["fingerprint"].startswith("sha256:")
    )
