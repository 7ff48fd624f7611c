"""`crop.landmarks_model`: `align:S` aligns on DeepfakeBench's 81-point predictor when given it.

DeepfakeBench's rule, transcribed from github.com/SCLBD/DeepfakeBench (cloned read-only at
/work/ext/deepfakebench), preprocessing/preprocess.py:
* `get_keypts` (103-117): `predictor(image, face)` on the RGB frame, then parts 37, 44, 30, 49, 55;
  `predictor` is `shape_predictor_81_face_landmarks.dat` (`main`, 278-279).
* `img_align_crop` (120-172): float32 source points, `SimilarityTransform().estimate(src, dst)`
  (155-157), `cv2.warpAffine(img, tform.params[0:2, :], (256, 256))` (163).
* `extract_aligned_face_dlib` (175-204): the largest HOG face (184-188), the crop turned to BGR (195),
  HOG with one upsampling on it (198), no face: the frame is dropped (199-200).

A tiny 81-point predictor is trained here (tests/test_export_deepfakebench.py's helper): nothing is
downloaded. Its parts 37/44/30/49/55 sit elsewhere than the 68-point model's, so the two crops differ.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
from skimage import transform as sktransform

from faceshard.config import CropConfig, load_config
from faceshard.errors import ExitCode
from faceshard.models.registry import fingerprint_file
from faceshard.records import Detections, Frame
from faceshard.storage.commit import dataset_fingerprint
from faceshard.tasks.crops import Cropper
from faceshard.tasks.pipeline import weights_manifest
from tests.test_export_deepfakebench import dfb_align, dfb_template, dlib_models, train_81_point_predictor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_81(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 81-point predictor trained on DeepfakeBench-aligned crops of the astronaut."""
    detector, predictor = dlib_models()
    rgb = skimage.data.astronaut()
    crops = []
    for variant in (rgb, np.ascontiguousarray(rgb[:, ::-1]), (rgb * 0.8).astype(np.uint8)):
        rect = max(detector(variant, 1), key=lambda r: r.width() * r.height())
        bgr, _ = dfb_align(variant, rect, detector, predictor)
        crops.append(cv2.imencode(".png", bgr)[1].tobytes())
    path = tmp_path_factory.mktemp("dlib81") / "shape_predictor_81_face_landmarks.dat"
    return train_81_point_predictor(path, crops)


def dfb_get_keypts(rgb: np.ndarray, face: Any, predictor: Any) -> np.ndarray:
    """preprocess.py:103-117."""
    shape = predictor(rgb, face)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in (37, 44, 30, 49, 55)])


def dfb_extract(rgb: np.ndarray, predictor_file: Path) -> np.ndarray | None:
    """preprocess.py:175-200 with its 81-point file: the BGR crop of the largest face, or None."""
    import dlib

    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_file))
    face = max(detector(rgb, 1), key=lambda rect: rect.width() * rect.height())
    src = dfb_get_keypts(rgb, face, predictor).astype(np.float32)
    tform = sktransform.SimilarityTransform()
    with warnings.catch_warnings():  # scikit-image 0.26 deprecates estimate(); DeepfakeBench calls it
        warnings.simplefilter("ignore", FutureWarning)
        tform.estimate(src, dfb_template())
    cropped = cv2.cvtColor(cv2.warpAffine(rgb, tform.params[0:2, :], (256, 256)), cv2.COLOR_RGB2BGR)
    return cropped if len(detector(cropped, 1)) else None


def test_align_on_the_81_point_model_is_deepfakebench_preprocess_and_not_the_68_point_crop(
    model_81: Path,
) -> None:
    import dlib

    rgb = skimage.data.astronaut()
    rect = max(dlib.get_frontal_face_detector()(rgb, 1), key=lambda r: r.width() * r.height())
    box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
    dets = Detections(box[None], np.ones(1, np.float32))
    assert dlib.shape_predictor(str(model_81))(rgb, rect).num_parts == 81

    (face,) = Cropper(CropConfig(method="align:256", landmarks_model=str(model_81)))(Frame(0, rgb), dets)
    theirs = dfb_extract(rgb, model_81)
    assert theirs is not None
    np.testing.assert_array_equal(cv2.cvtColor(face.crop, cv2.COLOR_RGB2BGR), theirs)

    (on_68,) = Cropper(CropConfig(method="align:256"))(Frame(0, rgb), dets)
    assert np.abs(on_68.crop.astype(int) - face.crop.astype(int)).mean() > 1  # other points, other crop
    # the drop check runs with it too: a box on no face leaves an aligned crop without one
    background = np.array([330, 20, 480, 170], np.float32)
    cropper = Cropper(CropConfig(method="align:256", landmarks_model=str(model_81)))
    assert cropper(Frame(0, rgb), Detections(background[None], np.ones(1, np.float32))) == []


def test_the_model_used_is_recorded_and_outputs_built_without_it_keep_their_fingerprint(
    model_81: Path, tmp_path: Path
) -> None:
    plain = load_config("deepfakebench")
    weights = weights_manifest(plain)
    assert "landmarks" not in weights and "landmarks_model" not in plain.row_affecting()["crop"]
    before = dataset_fingerprint(plain.row_affecting(), weights)

    given = load_config("deepfakebench", overrides=[f"crop.landmarks_model={model_81}"])
    recorded = weights_manifest(given)["landmarks"]
    assert recorded["name"] == "dlib-81" and recorded["source"] == str(model_81)
    assert recorded["fingerprint"] == fingerprint_file(model_81)
    after = dataset_fingerprint(given.row_affecting(), weights_manifest(given))
    assert after != before  # crops aligned on other points are other rows

    moved = tmp_path / "elsewhere.dat"  # the same file at another path: the same rows
    moved.write_bytes(model_81.read_bytes())
    same = load_config("deepfakebench", overrides=[f"crop.landmarks_model={moved}"])
    assert dataset_fingerprint(same.row_affecting(), weights_manifest(same)) == after

    with pytest.raises(ValueError, match="align:S only"):
        weights_manifest(load_config("demo", overrides=[f"crop.landmarks_model={model_81}"]))


def test_a_missing_landmarks_model_is_refused_before_anything_starts(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\nclip.mp4,0\n")
    missing = tmp_path / "nowhere" / "shape_predictor_81_face_landmarks.dat"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("faceshard")), "build", str(manifest), "--out", str(out),
         "--preset", "deepfakebench", "--set", f"crop.landmarks_model={missing}"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == ExitCode.NO_WEIGHTS, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "crop.landmarks_model" in said and "no such file" in said
    assert not out.exists()  # nothing written
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()  # no Prefect server started


def test_weights_and_export_say_which_model_aligned_the_crops(
    model_81: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    from dataclasses import asdict

    import pyarrow as pa
    from typer.testing import CliRunner

    from faceshard.app.cli import app
    from faceshard.models.landmarks import align_weights
    from faceshard.records import VideoTask
    from faceshard.storage.commit import Output
    from faceshard.storage.manifest import plan_shards
    from faceshard.storage.testing import fake_shard_tables

    listed = CliRunner().invoke(
        app, ["weights", "--preset", "deepfakebench", "--set", f"crop.landmarks_model={model_81}", "--json"]
    )
    assert listed.exit_code == 0, listed.output
    (report,) = json.loads(listed.stdout)["presets"]
    roles = {row["role"]: row for row in report["weights"]}
    assert roles["landmarks"]["status"] == "present" and roles["landmarks"]["source"] == str(model_81)

    rgb = skimage.data.astronaut()
    (face,) = Cropper(CropConfig(method="align:256", landmarks_model=str(model_81)))(
        Frame(0, rgb), Detections(np.array([[170, 40, 300, 200]], np.float32), np.ones(1, np.float32))
    )
    png = cv2.imencode(".png", cv2.cvtColor(face.crop, cv2.COLOR_RGB2BGR))[1].tobytes()

    def export(store: str, weights: dict[str, Any]) -> dict[str, Any]:
        videos = [VideoTask("g0", "/d/DFDC/test/g0.mp4", 1, None, "test", dataset="dfdc")]
        config = {"crop": {"save": True, "method": "align:256"}}
        out = Output.open(store, config=config, weights=weights)
        (plan,) = plan_shards(videos, 1)
        out.set_plan([plan])
        tables = fake_shard_tables(plan, faces_per_video=1, emb_dim=None, with_crop=True)
        index = tables["faces"].schema.get_field_index("crop")
        field = tables["faces"].schema.field(index)
        tables["faces"] = tables["faces"].set_column(index, field, pa.array([png], pa.binary()))
        out.commit_shard(plan, tables, {})
        done = CliRunner().invoke(app, ["export", store, "--out", store + "-dfb", "--json"])
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no 81-point model found elsewhere
    hint = "crop.landmarks_model=/path/to/shape_predictor_81_face_landmarks.dat"
    on_68 = export(str(tmp_path / "on68"), {})
    assert on_68["aligned_on"] is None and any(hint in d for d in on_68["differs_from_deepfakebench"])
    assert hint in Path(on_68["readme"]).read_text()

    on_81 = export(str(tmp_path / "on81"), {"landmarks": asdict(align_weights(model_81))})
    assert on_81["aligned_on"] == str(model_81) and on_81["differs_from_deepfakebench"] == []
    assert on_81["landmark_points"] == 81  # the build's model saves the landmarks too
    readme = Path(on_81["readme"]).read_text()
    assert hint not in readme and "aligned its crops on that model's points" in " ".join(readme.split())
