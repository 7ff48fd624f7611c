"""Facial landmarks for alignment (SPEC §3 `align:S`, `arcface:S`) from dlib's 68-point shape predictor.

`deepfakebench_points` are the five points DeepfakeBench's `preprocess.py` aligns on (dlib's 0-based
parts 37, 44, 30, 49, 55: upper eyelids, nose tip, upper/lower lip beside the corners); `five_points`
are ArcFace's (eye centres, nose tip, mouth corners). `crop_landmarks` is DeepfakeBench's check on
the aligned crop: HOG with one upsampling, the first face, its 68 points (or None: the frame is dropped).

The predictor file ships in the `face_recognition_models` package; it is located on disk instead of
imported because `import face_recognition_models` needs pkg_resources (gone in setuptools >= 81).

DeepfakeBench's preprocess.py loads `shape_predictor_81_face_landmarks.dat` instead (a third-party
model: the 68 points plus 13 on the forehead). It is never downloaded: `find_predictor_81` looks
for it where a user puts it (the registry card `dlib-81`), and the export saves 81 points when it is there, 68
(and says so) when not. A build given it (`crop.landmarks_model`) aligns and checks its crops with it,
as DeepfakeBench does (`align_weights` records which file did).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from faceshard.models.registry import WeightsInfo, WeightsUnavailableError, cached_model, fingerprint_file

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
PREDICTOR_81_FILE = "shape_predictor_81_face_landmarks.dat"
# DeepfakeBench README (Preprocessing, step 1): the file goes into its ./preprocessing/dlib_tools folder.
DEEPFAKEBENCH_PREDICTOR_DIR = Path("preprocessing") / "dlib_tools"

# 68-point indices: eye contours (image-left eye first), nose tip, mouth corners — the ArcFace order.
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP = 30
_MOUTH_LEFT = 48
_MOUTH_RIGHT = 54
# DeepfakeBench preprocessing/preprocess.py get_keypts: shape.part(37), (44), (30), (49), (55), 0-based.
DEEPFAKEBENCH_POINTS = (37, 44, 30, 49, 55)


def predictor_path() -> Path:
    """Where `shape_predictor_68_face_landmarks.dat` lies inside the installed face_recognition_models."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face_recognition_models is not installed: no dlib landmark model")
    path = Path(spec.submodule_search_locations[0]) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"dlib landmark model missing: {path}")
    return path


def cache_path_81() -> Path:
    """The local place faceshard looks for the 81-point model when no path is given."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache) / "faceshard" / PREDICTOR_81_FILE


def find_predictor_81(explicit: Path | None = None, deepfakebench: Path | None = None) -> Path | None:
    """The 81-point model file: `explicit` (must exist), else in DeepfakeBench's checkout, else the cache.

    None when it is nowhere: nothing is downloaded.
    """
    if explicit is not None:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"--landmarks-model {explicit}: no such file")
        return Path(explicit)
    places = [deepfakebench / DEEPFAKEBENCH_PREDICTOR_DIR / PREDICTOR_81_FILE] if deepfakebench else []
    return next((p for p in [*places, cache_path_81()] if p.is_file()), None)


def landmarks_81_weights() -> WeightsInfo:
    """The 81-point model in the cache (`faceshard weights`), or WeightsUnavailableError saying where to put it."""
    path = find_predictor_81()
    if path is None:
        raise WeightsUnavailableError(
            f"{PREDICTOR_81_FILE} not found (never downloaded): `faceshard export` saves dlib's 68 points. "
            f"Put it at {cache_path_81()}, or in DeepfakeBench's checkout (preprocessing/dlib_tools/, "
            "found through --run-from), or give it with `faceshard export --landmarks-model FILE`"
        )
    return WeightsInfo("dlib-81", str(path), fingerprint_file(path))


def align_weights(path: str | os.PathLike[str]) -> WeightsInfo:
    """The predictor file `crop.landmarks_model` names, fingerprinted (never loaded, never downloaded)."""
    if not Path(path).expanduser().is_file():
        raise WeightsUnavailableError(
            f"crop.landmarks_model {path}: no such file (never downloaded). Put DeepfakeBench's "
            f"{PREDICTOR_81_FILE} there, or leave the setting out to align on dlib's 68-point model."
        )
    return WeightsInfo("dlib-81", str(Path(path).expanduser()), fingerprint_file(path))


def load_predictor(path: Path | None = None) -> Any:
    """A dlib shape predictor, loaded once per process (the files are ~100 MB); default the 68-point one."""
    import dlib

    path = path or predictor_path()
    return cached_model(("dlib-shape-predictor", str(path)), lambda: dlib.shape_predictor(str(path)))


def predictor_points(path: Path) -> int:
    """How many points the predictor in `path` places (DeepfakeBench's: 81)."""
    import dlib

    blank = np.zeros((16, 16), np.uint8)
    return int(load_predictor(path)(blank, dlib.rectangle(2, 2, 13, 13)).num_parts)


def _hog() -> Any:
    import dlib

    return cached_model(("dlib-hog",), dlib.get_frontal_face_detector)


def _parts(rgb: np.ndarray, box: np.ndarray, predictor: Path | None = None) -> np.ndarray:
    """(N, 2) float32 landmarks of the face in `box` (x1, y1, x2, y2, rounded to dlib's rectangle)."""
    import dlib

    x1, y1, x2, y2 = (round(float(v)) for v in box[:4])
    shape = load_predictor(predictor)(
        np.ascontiguousarray(rgb, dtype=np.uint8), dlib.rectangle(x1, y1, x2, y2)
    )
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def deepfakebench_points(rgb: np.ndarray, box: np.ndarray, predictor: Path | None = None) -> np.ndarray:
    """(5, 2) float32: parts 37, 44, 30, 49, 55 (0-based), DeepfakeBench's alignment points, of the
    `predictor` file (its 81-point one) or of dlib's 68-point model (the same parts there)."""
    return _parts(rgb, box, predictor)[list(DEEPFAKEBENCH_POINTS)]


def crop_landmarks(image: np.ndarray, predictor: Path | None = None) -> np.ndarray | None:
    """(N, 2) int64 landmarks of the first face dlib HOG (one upsampling) finds in `image`, or None.

    DeepfakeBench runs this on each aligned crop (BGR, as it saves it) and drops the frame when no
    face is found; the points are what it saves in `landmarks/`. `predictor`: a model file (its
    81-point one); default dlib's 68-point model.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    rects = _hog()(image, 1)
    if len(rects) == 0:
        return None
    shape = load_predictor(predictor)(image, rects[0])
    return np.array([(p.x, p.y) for p in shape.parts()], np.int64)


def five_points(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(5, 2) float32 x, y: image-left eye centre, image-right eye centre, nose tip, mouth corners L, R.

    `box` is (x1, y1, x2, y2) in `rgb`'s pixels, as a detector returns it (may exceed the frame).
    """
    points = _parts(rgb, box)
    return np.stack(
        [
            points[_LEFT_EYE].mean(axis=0),
            points[_RIGHT_EYE].mean(axis=0),
            points[_NOSE_TIP],
            points[_MOUTH_LEFT],
            points[_MOUTH_RIGHT],
        ]
    ).astype(np.float32)
