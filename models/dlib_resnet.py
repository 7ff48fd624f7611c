"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) in PyTorch.

dlib-bin runs this network on the CPU without BLAS, one face at a time (~63 ms a face here), and never
on a GPU. The same weights read into torch give the same 128-d descriptors batched, on CPU or CUDA.

The file is dlib's own serialization of `anet_type` (dlib examples/dnn_face_recognition_ex.cpp):
`loss_metric<fc_no_bias<128, avg_pool_everything<alevel0<…alevel4<max_pool<3,3,2,2, relu<affine<
con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>…>>>`. The network's *shape* (which layers feed which
residual sum) lives in that C++ type, not in the file, so it is written out here; the file supplies
every layer's kind, sizes, strides, paddings and parameters, and `load_dlib_resnet` checks each of
them, and the file's nesting of layers and tag/skip markers, against this module before loading.

Format facts (dlib sources):
* integers (dlib/serialize.h `pack_int`): a control byte (low nibble = byte count, 0x80 = negative),
  then the magnitude little-endian; strings are an integer length then the bytes; bools are the
  characters '0'/'1'.
* scalar floats (dlib/serialize.h `serialize_floating_point`, dlib/float_details.h): NOT raw IEEE but
  an int64 mantissa and an int16 exponent, value = mantissa · 2^exponent (exponent ≥ 32000 codes
  inf/−inf/NaN); a first byte with any of 0x70 set means dlib's older ASCII form.
* tensors (dlib/cuda/tensor.h `serialize(const tensor&)`): version 2, num_samples, k, nr, nc, then the
  values as raw little-endian IEEE float32 (so the ~5.6 M weights read with one `np.frombuffer`).
* nesting (dlib/dnn/core.h): `add_loss_layer` = version 1, loss details, subnet; `add_layer` = version
  2, its *subnet first*, then its details, three bools, x_grad, cached_output, params_grad; the
  bottom `add_layer` (over the input layer) = version 3, input layer, details, three bools, x_grad,
  cached_output, grad_final, sample_expansion_factor; `add_tag_layer`/`add_skip_layer` = version 1,
  subnet. The file is therefore every wrapper's version top-down, then the layers bottom-up.
* layers (dlib/dnn/layers.h): `con_4` params = filters (num_filters, k, nr, nc) then num_filters
  biases, cross-correlation; `affine_` params = gamma (k) then beta (k), `y = x·gamma + beta` per
  channel in CONV_MODE; `max_pool_2`/`avg_pool_2` windows start at `i·stride − padding` and are clipped
  to the image (so an average over a window crossing the border divides by the pixels inside);
  `add_prev_` sums two tensors of different sizes by zero-extending both to the larger size in every
  dimension (dlib/cuda/cpu_dlib.cpp `add(dest, src1, src2)`); `fc_` weights are (num_inputs,
  num_outputs), `y = x · W`.
* input (dlib/dnn/input.h `input_rgb_image_sized`): planes R, G, B, `(pixel − avg) / 256` with the
  averages stored in the file (122.782, 117.001, 104.298).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHIP_SIZE = 150  # tools/python/src/face_recognition.cpp: get_face_chip_details(face, 150, padding)
CHIP_PADDING = 0.25

_TAG = "tag"  # a tag or skip marker in the file's nesting (version 1, no details)

# What a file layer is checked against: its torch module, a pooling window (size, stride, padding),
# or nothing (relu_, add_prev_).
LayerSpec = nn.Module | tuple[int, int, int] | None


class DlibFormatError(ValueError):
    """The file is not the dlib face-recognition network this module implements."""


# ----------------------------------------------------------------------------------------- reading


@dataclass
class DlibLayer:
    """One layer's details as serialized: its version string, scalars and float32 arrays."""

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class _Reader:
    """dlib's serialization primitives over the file's bytes (see the module docstring)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"file ends at byte {len(self.data)} inside a value at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise DlibFormatError(f"bad integer control byte {control:#x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def string(self) -> str:
        return self._take(self.int()).decode("ascii", errors="replace")

    def float(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise DlibFormatError(f"float at byte {self.pos} is in dlib's old ASCII form, not supported")
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # float_details::is_inf, is_ninf, is_nan
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        char = self._take(1)
        if char not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool {char!r} at byte {self.pos - 1}")
        return char == b"1"

    def tensor(self) -> np.ndarray:
        if (version := self.int()) != 2:
            raise DlibFormatError(f"tensor version {version} at byte {self.pos}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        count = math.prod(shape)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4", count=count).reshape(shape).astype(np.float32)

    def alias_tensor(self) -> tuple[int, ...]:
        if (version := self.int()) != 1:
            raise DlibFormatError(f"alias_tensor version {version} at byte {self.pos}, expected 1")
        return tuple(self.int() for _ in range(4))


def _read_details(r: _Reader) -> DlibLayer:
    """One layer's `serialize(details)`, dispatched on its version string (dlib/dnn/layers.h, input.h)."""
    kind = r.string()
    if kind == "input_rgb_image_sized":
        mean = (r.float(), r.float(), r.float())
        return DlibLayer(kind, {"mean": mean, "size": (r.int(), r.int())})
    if kind == "con_4":
        params = r.tensor().reshape(-1)
        attrs = {name: r.int() for name in ("filters", "nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")}
        attrs["filter_shape"], attrs["bias_shape"] = r.alias_tensor(), r.alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        return DlibLayer(kind, attrs, params)
    if kind == "affine_":
        params = r.tensor().reshape(-1)
        attrs = {"gamma_shape": r.alias_tensor(), "beta_shape": r.alias_tensor(), "mode": r.int()}
        return DlibLayer(kind, attrs, params)
    if kind in ("max_pool_2", "avg_pool_2"):
        names = ("nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")
        return DlibLayer(kind, {name: r.int() for name in names})
    if kind in ("relu_", "add_prev_"):
        return DlibLayer(kind)
    if kind in ("fc_2", "fc_3"):
        attrs = {"outputs": r.int(), "inputs": r.int()}
        params = r.tensor().reshape(-1)
        attrs["weight_shape"], attrs["bias_shape"] = r.alias_tensor(), r.alias_tensor()
        attrs["bias_mode"] = r.int()
        for _ in range(4):
            r.float()
        if kind == "fc_3":
            attrs["use_bias"] = r.bool()
        return DlibLayer(kind, attrs, params)
    raise DlibFormatError(f"layer {kind!r} is not one the dlib face-recognition network uses")


@dataclass
class DlibNet:
    """A serialized dlib network: its loss, its nesting top-down, and its layers bottom-up."""

    loss: DlibLayer
    nesting: list[str]  # top-down: "layer" for an add_layer, "tag" for a tag/skip marker
    layers: list[DlibLayer]  # bottom-up, the input layer first


def read_dlib_net(path: str | Path) -> DlibNet:
    """Parse a dlib DNN file (see the module docstring for the format and its sources)."""
    r = _Reader(Path(path).read_bytes())
    if (version := r.int()) != 1:
        raise DlibFormatError(f"{path}: add_loss_layer version {version}, expected 1")
    loss_kind = r.string()
    if loss_kind != "loss_metric_2":
        raise DlibFormatError(f"{path}: loss {loss_kind!r}, expected loss_metric_2")
    loss = DlibLayer(loss_kind, {"margin": r.float(), "distance_threshold": r.float()})
    versions = []
    while True:  # wrapper versions (1 to 3), until the input layer's name (its length is larger)
        start = r.pos
        if (version := r.int()) not in (1, 2, 3):
            r.pos = start
            break
        versions.append(version)
    if not versions or versions[-1] != 3:
        raise DlibFormatError(f"{path}: the bottom layer's version is not 3")
    nesting = [_TAG if v == 1 else "layer" for v in versions]
    layers = [_read_details(r)]
    for position, wrapper in enumerate(reversed(nesting)):
        if wrapper == _TAG:
            continue
        layer = _read_details(r)
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, get_output…_disabled
            r.bool()
        r.tensor(), r.tensor()  # x_grad, cached_output
        r.tensor()  # params_grad, or grad_final for the bottom layer
        if position == 0:
            r.int()  # sample_expansion_factor
        layers.append(layer)
    if r.pos != len(r.data):
        raise DlibFormatError(f"{path}: {len(r.data) - r.pos} bytes left after the network")
    return DlibNet(loss, nesting, layers)


# ------------------------------------------------------------------------------------------ network


class Affine(nn.Module):
    """dlib's `affine_` in CONV_MODE: batch norm folded into a per-channel scale and shift."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta[:, None, None], x, self.gamma[:, None, None])


def add_zero_extended(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's `add_prev_`: both tensors zero-extended (channels, then bottom/right) to the larger size."""
    if a.shape == b.shape:
        return a + b
    size = [max(sa, sb) for sa, sb in zip(a.shape, b.shape, strict=True)]
    return F.pad(a, _pad_to(a.shape, size)) + F.pad(b, _pad_to(b.shape, size))


def _pad_to(shape: torch.Size, size: list[int]) -> list[int]:
    """F.pad amounts extending an NCHW `shape` to `size` at the end of C, H and W."""
    return [0, size[3] - shape[3], 0, size[2] - shape[2], 0, size[1] - shape[1]]


class Residual(nn.Module):
    """dlib's `ares` / `ares_down`: relu(block(x) + x), or + avg_pool<2,2,2,2>(x) when downsampling."""

    def __init__(self, channels_in: int, channels: int, down: bool) -> None:
        super().__init__()
        stride, padding = (2, 0) if down else (1, 1)  # con_'s default padding: 0 when stride ≠ 1
        self.down = down
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, padding)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_zero_extended(y, shortcut))

    def dlib_layers(self) -> list[tuple[str, LayerSpec]]:
        """This block's layers in the file's (bottom-up) order."""
        layers: list[tuple[str, LayerSpec]] = [
            ("con_4", self.conv1),
            ("affine_", self.affine1),
            ("relu_", None),
        ]
        layers += [("con_4", self.conv2), ("affine_", self.affine2)]
        layers += [("avg_pool_2", (2, 2, 0))] if self.down else []
        return [*layers, ("add_prev_", None), ("relu_", None)]

    def dlib_nesting(self) -> list[str]:
        """The file's top-down wrapper sequence for this block (relu<add_prev<[avg_pool<skip<tag<]…tag<>."""
        head = ["layer", "layer", "layer", _TAG, _TAG] if self.down else ["layer", "layer"]
        return [*head, *["layer"] * 5, _TAG]


# (channels, number of blocks, first block downsamples) bottom-up: alevel4 … alevel0.
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class DlibFaceResNet(nn.Module):
    """`anet_type` of dlib's dnn_face_recognition_ex.cpp: 150×150 RGB chip → 128-d descriptor."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3, 1, 1), persistent=True)
        self.conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.affine = Affine(32)
        blocks, channels_in = [], 32
        for channels, count, down in LEVELS:
            for i in range(count):
                blocks.append(Residual(channels_in, channels, down and i == 0))
                channels_in = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """(n, 150, 150, 3) uint8 RGB chips → (n, 128) float32 descriptors."""
        x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
        x = F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def dlib_layers(self) -> list[tuple[str, LayerSpec]]:
        """Every layer in the file's bottom-up order, after the input layer."""
        layers: list[tuple[str, LayerSpec]] = [("con_4", self.conv), ("affine_", self.affine)]
        layers += [("relu_", None), ("max_pool_2", (3, 2, 0))]
        for block in self.blocks:
            layers += block.dlib_layers()
        # avg_pool_everything: avg_pool_<0,0,1,1>, a 0×0 window meaning the whole image.
        return [*layers, ("avg_pool_2", (0, 1, 0)), ("fc_2", self.fc)]

    def dlib_nesting(self) -> list[str]:
        """The file's top-down wrapper sequence: fc, avg_pool, the blocks top-down, then the stem."""
        nesting = ["layer", "layer"]
        for block in reversed(self.blocks):
            nesting += block.dlib_nesting()
        return [*nesting, "layer", "layer", "layer", "layer"]


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise DlibFormatError(message)


def _check_window(layer: DlibLayer, kernel: int, stride: int, padding: int, where: str) -> None:
    a = layer.attrs
    got = (a["nr"], a["nc"], a["stride_y"], a["stride_x"], a["pad_y"], a["pad_x"])
    _expect(got == (kernel, kernel, stride, stride, padding, padding), f"{where}: {layer.kind} {got}")


def _copy_into(param: torch.Tensor, values: np.ndarray) -> None:
    param.data = torch.from_numpy(np.ascontiguousarray(values).reshape(param.shape))


def _load_layer(layer: DlibLayer, kind: str, spec: LayerSpec, where: str) -> None:
    """Check one file layer against its torch counterpart and copy its parameters in."""
    _expect(layer.kind == kind, f"{where}: file has {layer.kind!r}, the network expects {kind!r}")
    params, attrs = layer.params, layer.attrs
    if isinstance(spec, tuple):
        _check_window(layer, *spec, where)
    elif isinstance(spec, nn.Conv2d):
        weight, bias = spec.weight, spec.bias
        assert bias is not None
        _check_window(layer, weight.shape[2], spec.stride[0], int(spec.padding[0]), where)  # type: ignore[arg-type]
        _expect(attrs["filter_shape"] == tuple(weight.shape), f"{where}: filters {attrs['filter_shape']}")
        _expect(params.size == weight.numel() + bias.numel(), f"{where}: {params.size} values")
        _copy_into(weight, params[: weight.numel()])
        _copy_into(bias, params[weight.numel() :])
    elif isinstance(spec, Affine):
        channels = spec.gamma.numel()
        _expect(attrs["mode"] == 0, f"{where}: affine_ not in CONV_MODE")
        _expect(params.size == 2 * channels, f"{where}: {params.size} values")
        _copy_into(spec.gamma, params[:channels])
        _copy_into(spec.beta, params[channels:])
    elif isinstance(spec, nn.Linear):
        shape = (spec.in_features, spec.out_features)
        _expect((attrs["inputs"], attrs["outputs"]) == shape and attrs["bias_mode"] == 1, f"{where}: {attrs}")
        _expect(params.size == spec.weight.numel(), f"{where}: {params.size} values")
        _copy_into(spec.weight, params.reshape(shape).T)


def load_dlib_resnet(path: str | Path) -> DlibFaceResNet:
    """The network with the file's weights, after checking the file is exactly this network."""
    net = read_dlib_net(path)
    model = DlibFaceResNet()
    _expect(
        net.nesting == model.dlib_nesting(), f"{path}: the file's layer nesting is not dlib's face ResNet"
    )
    expected = model.dlib_layers()
    _expect(len(net.layers) == len(expected) + 1, f"{path}: {len(net.layers)} layers")
    source = net.layers[0]
    _expect(source.kind == "input_rgb_image_sized", f"{path}: input {source.kind!r}")
    _expect(source.attrs["size"] == (CHIP_SIZE, CHIP_SIZE), f"{path}: input size {source.attrs['size']}")
    model.mean.copy_(torch.tensor(source.attrs["mean"], dtype=torch.float32).view(3, 1, 1))
    for index, (layer, (kind, spec)) in enumerate(zip(net.layers[1:], expected, strict=True), start=1):
        _load_layer(layer, kind, spec, f"{path}: layer {index} from the input")
    return model.eval()
