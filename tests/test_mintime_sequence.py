"""MINTIME pads a sample's faces together: its pinned albumentations 0.5.2 pads them all by the first's amounts.

The oracle is transcribed from MINTIME's loader (github.com/davide-coccomini/MINTIME, commit 064d0f0e) and
the albumentations release its requirements.txt:2 pins (0.5.2), never from faceshard:

- deepfakes_dataset.py:102-108 — the val transform: IsotropicResize(224, AREA down, CUBIC up),
  PadIfNeeded(224, 224, BORDER_CONSTANT), Resize(224, 224), with `additional_targets` naming every slot
  an `image` (:294-296), all slots passed to ONE call (:303-308); padding slots are zero 224 × 224
  images (:277);
- transforms/albu.py:9-26 — isotropically_resize_image (int() of the scaled side);
- albumentations 0.5.2 core/transforms_interface.py:146 — `update_params` reads rows and cols from
  `kwargs["image"]`, the FIRST image only, and `apply_with_params` applies those params to every target;
- augmentations/transforms.py:138-175 — PadIfNeeded.update_params: top = int((min - rows) / 2.0),
  bottom = min - rows - top, none when rows >= min (likewise columns); functional.py:717-721 pads with
  cv2.copyMakeBorder (value None: zeros);
- augmentations/transforms.py:462-469, functional.py:206-211 — Resize: cv2.resize INTER_LINEAR unless
  the image is already the size.
"""

from __future__ import annotations

import cv2
import numpy as np
import timm
import torch

from faceshard.models.embedders import Embedder, mintime_sequence_tokens
from faceshard.models.inputs import isotropic_square, mintime_sequence

SIZE = 224


def isotropically_resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """transforms/albu.py:9-26."""
    h, w = img.shape[:2]
    if max(w, h) == size:
        return img
    if w > h:
        scale = size / w
        h = h * scale
        w = size
    else:
        scale = size / h
        w = w * scale
        h = size
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    return cv2.resize(img.astype("uint8"), (int(w), int(h)), interpolation=interpolation)


def mintime_val_sequence(sequence: list[np.ndarray], size: int) -> list[np.ndarray]:
    """One Compose call over the whole sequence, as albumentations 0.5.2 runs it."""
    resized = [isotropically_resize_image(img, size) for img in sequence]  # per target, its own shape
    rows, cols = resized[0].shape[:2]  # transforms_interface.py:146: kwargs["image"]
    if rows < size:
        h_pad_top = int((size - rows) / 2.0)
        h_pad_bottom = size - rows - h_pad_top
    else:
        h_pad_top = h_pad_bottom = 0
    if cols < size:
        w_pad_left = int((size - cols) / 2.0)
        w_pad_right = size - cols - w_pad_left
    else:
        w_pad_left = w_pad_right = 0
    padded = [
        cv2.copyMakeBorder(
            img, h_pad_top, h_pad_bottom, w_pad_left, w_pad_right, cv2.BORDER_CONSTANT, value=None
        )
        for img in resized
    ]
    return [
        img
        if img.shape[:2] == (size, size)
        else cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        for img in padded
    ]


def random_sequence(rng: np.random.Generator, n: int) -> list[np.ndarray | None]:
    """Face crops as the pipelines cut them (square, near square, edge-clipped) and padding slots (None)."""
    slots: list[np.ndarray | None] = []
    for _ in range(n):
        kind = rng.integers(0, 5)
        if kind == 0 and slots:
            slots.append(None)
            continue
        side = int(rng.integers(20, 400))
        if kind == 1:
            shape = (side, side)
        elif kind == 2:
            shape = (side, max(1, side + int(rng.integers(-3, 4))))
        else:
            shape = (side, max(1, int(side * rng.uniform(0.4, 1.6))))
        slots.append(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    return slots


def test_sequence_canvases_are_mintime_s_val_compose_over_the_whole_sequence() -> None:
    rng = np.random.default_rng(20)
    same_as_cache = differs = 0
    for _ in range(300):
        slots = random_sequence(rng, int(rng.choice([1, 2, 8, 16])))
        expected = mintime_val_sequence(
            [np.zeros((SIZE, SIZE, 3), np.uint8) if s is None else s for s in slots], SIZE
        )
        got = mintime_sequence(slots, SIZE)
        assert len(got) == len(expected)
        for canvas, oracle in zip(got, expected, strict=True):
            assert canvas.shape == (SIZE, SIZE, 3) and canvas.dtype == np.uint8
            np.testing.assert_array_equal(canvas, oracle)
        # the per-face cache (`isotropic:224`) holds MINTIME's canvas exactly where the slot's isotropic
        # shape is the first slot's; elsewhere the first slot's padding and the squash change it
        first = isotropically_resize_image(slots[0], SIZE).shape  # type: ignore[arg-type]
        for slot, oracle in zip(slots, expected, strict=True):
            if slot is None:
                continue
            own = isotropic_square(slot, SIZE)
            if isotropically_resize_image(slot, SIZE).shape == first:
                np.testing.assert_array_equal(own, oracle)
                same_as_cache += 1
            elif not np.array_equal(own, oracle):
                differs += 1
    assert same_as_cache > 100 and differs > 100  # both cases were exercised


def test_sequence_tokens_are_mintime_s_backbone_on_its_sequence(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """MINTIME's train.py:341-354 feeds its EfficientNet the transformed sequence as BGR 0–255 floats."""
    torch.manual_seed(4)
    reference = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "b0.pth")
    embedder = Embedder(
        "efficientnet_b0",
        str(tmp_path / "b0.pth"),
        "tokens",
        "float32",
        input_spec="isotropic:224",
        normalise="bgr255",
    )
    rng = np.random.default_rng(5)
    slots: list[np.ndarray | None] = [
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((180, 150, 3), (150, 180, 3), (99, 100, 3))
    ] + [None]
    canvases = mintime_val_sequence(
        [np.zeros((SIZE, SIZE, 3), np.uint8) if s is None else s for s in slots], SIZE
    )
    bgr = torch.stack([torch.tensor(c[:, :, ::-1].copy()).float().permute(2, 0, 1) for c in canvases])
    with torch.no_grad():
        expected = reference.forward_features(bgr).numpy()  # (F, 1280, 7, 7)
    got = mintime_sequence_tokens(embedder, slots)
    assert got.shape == (4, 1280, 7, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-3)
    # the cached per-face tokens differ on the slots whose shape is not the first's
    cached = embedder.embed([s for s in slots if s is not None]).transpose(0, 2, 1).reshape(3, 1280, 7, 7)
    np.testing.assert_allclose(cached[0], expected[0], atol=1e-3)
    assert np.abs(cached[1] - expected[1]).max() > 1e-2
