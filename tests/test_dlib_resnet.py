"""dlib's face-recognition ResNet read into torch (models/dlib_resnet.py) against dlib-bin's own C++.

The oracle is dlib itself: `face_recognition_model_v1.compute_face_descriptor` on the same crop and
landmarks. Faces are real: the stills and frames of the fixture clips, found by dlib's HOG detector.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceshard.models.dlib_resnet import DlibFormatError, _Reader, load_dlib_resnet, read_dlib_net
from faceshard.models.identity import DlibEmbedder, dlib_model_files, dlib_rectangle

CROPS = [
    ("stills/angelina_jolie.jpg", None),
    ("stills/multiface.jpg", None),
    ("stills/paul_rudd.jpg", None),
    ("forgerynet_fake_2_faces.mp4", 0),
    ("forgerynet_fake_2_faces.mp4", 100),
    ("street_crowd.mp4", 0),
]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """As a worker runs it (models/threads.py); two threads on this shared 2-core box run 5× slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _image(fixtures: Path, name: str, frame: int | None) -> np.ndarray:
    if frame is None:
        return np.asarray(Image.open(fixtures / name).convert("RGB"))
    import av

    with av.open(str(fixtures / name)) as container:
        for index, decoded in enumerate(container.decode(video=0)):
            if index == frame:
                return decoded.to_ndarray(format="rgb24")
    raise AssertionError(f"{name} has no frame {frame}")


@pytest.fixture(scope="module")
def real_faces(shared_fixtures: Path) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Face crops (a third of the box as margin) with their HOG boxes in crop coordinates."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    crops: list[np.ndarray] = []
    boxes: list[np.ndarray | None] = []
    for name, frame in CROPS:
        image = np.ascontiguousarray(_image(shared_fixtures, name, frame))
        for box in detector(image, 0)[:4]:
            x1, y1, x2, y2 = box.left(), box.top(), box.right(), box.bottom()
            margin = (x2 - x1) // 3
            top, left = max(y1 - margin, 0), max(x1 - margin, 0)
            crops.append(np.ascontiguousarray(image[top : y2 + margin, left : x2 + margin]))
            boxes.append(np.array([x1 - left, y1 - top, x2 - left, y2 - top], np.float32))
    boxes[-1] = None  # the last face fills its crop: the whole crop is the box
    assert len(crops) >= 12
    return crops, boxes


def dlib_cpp_descriptors(crops: list[np.ndarray], boxes: list[np.ndarray | None]) -> np.ndarray:
    """The oracle: dlib-bin's own network, one face per call, as the embedder ran before."""
    import dlib

    recogniser_file, predictor_file = dlib_model_files()
    recogniser = dlib.face_recognition_model_v1(str(recogniser_file))
    predictor = dlib.shape_predictor(str(predictor_file))
    out = []
    for crop, box in zip(crops, boxes, strict=True):
        shape = predictor(crop, dlib_rectangle(box, crop.shape))
        out.append(np.asarray(recogniser.compute_face_descriptor(crop, shape)))
    return np.array(out)


@pytest.mark.fixtures
def test_torch_descriptors_equal_dlibs_on_real_faces_in_mixed_batches(
    real_faces: tuple[list[np.ndarray], list[np.ndarray | None]],
) -> None:
    crops, boxes = real_faces
    expected = dlib_cpp_descriptors(crops, boxes)
    batched = DlibEmbedder(batch_size=5).embed_crops(crops, boxes)  # batches mixing stills and clips
    one_by_one = DlibEmbedder(batch_size=1).embed_crops(crops, boxes)

    distances = np.linalg.norm(batched - expected, axis=1)
    print(
        f"\n{len(crops)} real faces: max |torch − dlib| = {np.abs(batched - expected).max():.2e}, "
        f"max distance {distances.max():.2e}; descriptor magnitude {np.abs(expected).max():.2f}"
    )
    assert batched.dtype == np.float32 and batched.shape == (len(crops), 128)
    assert distances.max() < 1e-4 and np.abs(batched - expected).max() < 1e-5
    assert np.abs(batched - one_by_one).max() < 1e-5  # a face's descriptor does not depend on its batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.fixtures
def test_cuda_descriptors_equal_the_cpus(
    real_faces: tuple[list[np.ndarray], list[np.ndarray | None]],
) -> None:
    crops, boxes = real_faces
    cuda = DlibEmbedder("cuda")
    assert next(cuda.model.parameters()).is_cuda
    assert np.abs(cuda.embed_crops(crops, boxes) - DlibEmbedder("cpu").embed_crops(crops, boxes)).max() < 1e-5


def test_the_file_reads_as_dlibs_network() -> None:
    recogniser, _ = dlib_model_files()
    net = read_dlib_net(recogniser)
    assert net.loss.kind == "loss_metric_2"
    assert net.loss.attrs["distance_threshold"] == pytest.approx(0.6) and net.loss.attrs[
        "margin"
    ] == pytest.approx(0.04)
    source = net.layers[0]
    assert source.attrs == {"mean": pytest.approx((122.782, 117.001, 104.298)), "size": (150, 150)}
    kinds = [layer.kind for layer in net.layers]
    assert (
        kinds.count("con_4") == 29 and kinds.count("add_prev_") == 14 and kinds[-2:] == ["avg_pool_2", "fc_2"]
    )
    parameters = sum(layer.params.size for layer in net.layers)
    model = load_dlib_resnet(recogniser)
    assert parameters == sum(p.numel() for p in model.parameters()) > 5_000_000


def test_dlib_integer_and_float_encodings() -> None:
    # pack_int: control byte = byte count | 0x80 when negative, then little-endian magnitude
    assert _Reader(b"\x01\x05").int() == 5 and _Reader(b"\x81\x1c").int() == -28
    assert _Reader(b"\x02\x34\x12").int() == 0x1234
    # float_details: int64 mantissa, int16 exponent: 10737418 · 2^-28 = 0.04 (the loss margin's bytes)
    assert _Reader(b"\x03\x0a\xd7\xa3\x81\x1c").float() == pytest.approx(0.04)
    assert _Reader(b"\x01\x03\x01\x00").float() == 3.0
    with pytest.raises(DlibFormatError, match="old ASCII"):
        _Reader(b"0.5 ").float()
    with pytest.raises(DlibFormatError, match="ends"):
        _Reader(b"\x04\x01\x02").int()


def _altered(tmp_path: Path, edit: object) -> Path:
    recogniser, _ = dlib_model_files()
    data = bytearray(recogniser.read_bytes())
    edit(data)  # type: ignore[operator]
    path = tmp_path / "altered.dat"
    path.write_bytes(bytes(data))
    return path


def test_a_truncated_padded_or_different_network_is_refused(tmp_path: Path) -> None:
    recogniser, _ = dlib_model_files()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(recogniser.read_bytes()[:5_000_000])
    with pytest.raises(DlibFormatError, match="ends"):
        load_dlib_resnet(truncated)
    padded = tmp_path / "padded.dat"
    shutil.copyfile(recogniser, padded)
    with padded.open("ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(DlibFormatError, match="bytes left"):
        load_dlib_resnet(padded)

    def stride_one_max_pool(data: bytearray) -> None:
        at = data.index(b"max_pool_2") + len(b"max_pool_2")  # nr, nc, stride_y: "\x01\x03\x01\x03\x01\x02"
        assert data[at : at + 6] == b"\x01\x03\x01\x03\x01\x02"
        data[at + 5] = 1

    with pytest.raises(DlibFormatError, match="max_pool_2"):
        load_dlib_resnet(_altered(tmp_path, stride_one_max_pool))
