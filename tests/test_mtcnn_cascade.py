"""models/mtcnn.py: the batched cascade gives facenet-pytorch's MTCNN answers exactly, on real footage."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN
from PIL import Image

from faceshard.models.mtcnn import AreaSampler, CeilMaxPool, MTCNNCascade, fast_pools


def every_second(path: Path, limit: int = 6) -> np.ndarray:
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        step = round(float(stream.average_rate))
        for index, frame in enumerate(container.decode(stream)):
            if index % step == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == limit:
                break
    return np.stack(frames)


@pytest.mark.parametrize(("kernel", "stride"), [(2, 2), (3, 2)])
def test_ceil_max_pool_equals_torch_and_keeps_the_layout(kernel: int, stride: int) -> None:
    generator = torch.Generator().manual_seed(kernel)
    for height, width in [(3, 3), (4, 7), (22, 22), (23, 46), (47, 10), (325, 577)]:
        x = torch.randn(2, 5, height, width, generator=generator)
        want = F.max_pool2d(x, kernel, stride, ceil_mode=True)
        got = CeilMaxPool(kernel, stride)(x)
        assert got.shape == want.shape and torch.equal(got, want)
        last = CeilMaxPool(kernel, stride)(x.contiguous(memory_format=torch.channels_last))
        assert torch.equal(last, want) and last.is_contiguous(memory_format=torch.channels_last)


def test_fast_pools_swaps_every_ceil_mode_pool() -> None:
    net = fast_pools(torch.nn.Sequential(torch.nn.MaxPool2d(3, 2, ceil_mode=True), torch.nn.MaxPool2d(2, 2)))
    assert isinstance(net[0], CeilMaxPool)
    assert isinstance(net[1], torch.nn.MaxPool2d)  # floor mode is left alone


def test_area_sampler_equals_interpolate_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    for height, width in [(13, 300), (120, 97), (299, 17), (540, 960)]:
        frames = torch.randint(0, 256, (2, height, width, 3), generator=generator, dtype=torch.uint8)
        sampler = AreaSampler(frames)
        as_float = frames.permute(0, 3, 1, 2).float()
        for scale in (0.6, 0.3545, 0.17, 0.07):
            size = (int(height * scale + 1), int(width * scale + 1))
            assert torch.equal(sampler.frames(size), F.interpolate(as_float, size=size, mode="area"))
        count = 40
        top = torch.randint(0, height - 1, (count,), generator=generator)
        left = torch.randint(0, width - 1, (count,), generator=generator)
        bottom = torch.minimum(
            top + torch.randint(1, 200, (count,), generator=generator), torch.tensor(height)
        )
        right = torch.minimum(
            left + torch.randint(1, 200, (count,), generator=generator), torch.tensor(width)
        )
        image = torch.randint(0, 2, (count,), generator=generator)
        for side in (24, 48):
            got = sampler.boxes(image, torch.stack([top, left], 1), torch.stack([bottom, right], 1), side)
            want = torch.cat(
                [
                    F.interpolate(as_float[i : i + 1, :, t:b, x0:x1], size=(side, side), mode="area")
                    for i, t, b, x0, x1 in zip(image, top, bottom, left, right, strict=True)
                ]
            )
            assert torch.equal(got, want)


@pytest.fixture(scope="module")
def footage(shared_fixtures: Path) -> dict[str, np.ndarray]:
    """Real frames from the shared fixtures (skips with the reason when absent, as in a user's clone)."""
    crowd = every_second(shared_fixtures / "street_crowd.mp4")
    height, width = crowd.shape[1:3]
    half = np.stack([np.asarray(Image.fromarray(f).resize((width // 2, height // 2))) for f in crowd])
    multiface = np.asarray(Image.open(shared_fixtures / "stills" / "multiface.jpg").convert("RGB"))
    fakes = every_second(shared_fixtures / "forgerynet_fake_2_faces.mp4", limit=4)
    blank = np.zeros((2, 240, 320, 3), np.uint8)
    return {"crowd": crowd, "crowd_half": half, "multiface": multiface[None], "fakes": fakes, "blank": blank}


@pytest.mark.parametrize("thresholds", [(0.6, 0.7, 0.7), (0.85, 0.95, 0.95)])
def test_cascade_gives_facenets_boxes_and_probabilities_exactly(
    footage: dict[str, np.ndarray], thresholds
) -> None:
    torch.set_num_threads(1)
    reference = MTCNN(keep_all=True, select_largest=False, thresholds=list(thresholds), min_face_size=20)
    cascade = MTCNNCascade(thresholds, 20, 0.709, torch.device("cpu"))
    faces = 0
    for name, frames in footage.items():
        want_boxes, want_probs = reference.detect(frames)
        got = cascade(frames)
        assert len(got) == len(frames)
        for (boxes, probs), expected_boxes, expected_probs in zip(got, want_boxes, want_probs, strict=True):
            if expected_boxes is None:
                assert boxes.shape == (0, 4) and probs.shape == (0,), name
                continue
            np.testing.assert_array_equal(boxes, np.asarray(expected_boxes, np.float32), err_msg=name)
            np.testing.assert_array_equal(probs, np.asarray(expected_probs, np.float32), err_msg=name)
            faces += len(boxes)
        if name == "blank":
            assert all(len(boxes) == 0 for boxes, _ in got)
    assert faces >= 20  # the comparison covered many real faces, not only empty frames
