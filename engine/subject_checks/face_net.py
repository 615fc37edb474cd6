"""dlib's face-recognition ResNet (the 128-d descriptor) in torch, read from dlib's own .dat file.

Why: the `dlib-bin` wheel is built without BLAS (`dlib.DLIB_USE_BLAS` is False), so its
convolutions are naive loops: one descriptor cost ~107 ms on this project's 2-core CPU
(Nov/Dec 2026), five photos ~0.54 s, most of an avatar's creation. The same network in torch
runs a batch of five 150x150 chips in a few tens of ms on one CPU thread, and on the GPU where
the profile runs on CUDA. The descriptors are dlib's (same weights, same arithmetic up to float
rounding: tests/engine/test_face_net.py compares them with dlib's to 1e-4), so the same-person
threshold keeps its meaning.

The network (dlib's examples/dnn_face_recognition_ex.cpp, `anet_type`): a 7x7/2 convolution,
3x3/2 max-pool, residual blocks of 32 (x3), 64 (x4), 128 (x3), 256 (x3) and 256 (x1) filters,
each level after the first starting with a stride-2 block whose shortcut is a 2x2/2 average
pool; global average pool; a 128x256 linear layer without bias. Batch norms are stored folded
(dlib's `affine_`). Two dlib conventions differ from torch's defaults and matter:
- a strided convolution or pool has no padding (3x3 stride-1 convolutions pad 1);
- `add_prev` adds tensors of different shapes by zero-padding both to the larger one (top-left
  aligned): the shortcut has fewer channels than the block, and at 8 -> 3 px the block is smaller.

The weights file is dlib's serialisation (dlib/dnn/core.h, layers.h): layer records inner-most
first, each starting with a length-prefixed version string (`con_4`, `affine_`, ...), integers
as dlib's packed ints, tensors as 4 version/dimension ints and little-endian float32s. The
reader walks the records in the order the architecture expects and checks every shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHIP_SIZE = 150  # the network's fixed input side (dlib's input_rgb_image_sized<150>)
DESCRIPTOR_SIZE = 128
# (filters, residual blocks) per level, input side first; every level but the first starts with
# a stride-2 block ("ares_down").
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class DlibFormatError(ValueError):
    """The file is not the dlib face-recognition network this module knows."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def seek_marker(self, name: str) -> None:
        """Move past the next record whose version string is `name`."""
        marker = bytes([len(name)]) + name.encode()
        # The string's length is itself a packed int: one byte of size (1), then the length.
        found = self._data.find(b"\x01" + marker, self.pos)
        if found < 0:
            raise DlibFormatError(f"no {name!r} record after byte {self.pos}")
        self.pos = found + 1 + len(marker)

    def int(self) -> int:
        head = self._data[self.pos]
        size, negative = head & 0x0F, bool(head & 0x80)
        if size > 8:
            raise DlibFormatError(f"bad packed int at byte {self.pos}")
        raw = self._data[self.pos + 1 : self.pos + 1 + size]
        self.pos += 1 + size
        value = int.from_bytes(raw, "little")
        return -value if negative else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0**exponent

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise DlibFormatError(f"tensor version {version} at byte {self.pos}")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        values = np.frombuffer(self._data[self.pos : end], dtype="<f4").reshape(shape)
        self.pos = end
        return values


@dataclass(frozen=True)
class _Conv:
    weight: np.ndarray  # (out, in, k, k)
    bias: np.ndarray
    stride: int
    padding: int


def _read_conv(reader: _Reader, inputs: int, outputs: int, kernel: int, stride: int) -> _Conv:
    reader.seek_marker("con_4")
    params = reader.tensor().reshape(-1)
    filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.int() for _ in range(7))
    expected = (outputs, kernel, kernel, stride, stride)
    if (filters, rows, cols, stride_y, stride_x) != expected or pad_y != pad_x:
        raise DlibFormatError(f"convolution {filters, rows, cols, stride_y} != {expected}")
    size = outputs * inputs * kernel * kernel
    if params.size != size + outputs:
        raise DlibFormatError(f"convolution of {params.size} values, expected {size + outputs}")
    weight = params[:size].reshape(outputs, inputs, kernel, kernel)
    return _Conv(weight, params[size:], stride, pad_y)


def _read_affine(reader: _Reader, channels: int) -> tuple[np.ndarray, np.ndarray]:
    reader.seek_marker("affine_")
    params = reader.tensor().reshape(-1)
    if params.size != 2 * channels:
        raise DlibFormatError(f"affine of {params.size} values, expected {2 * channels}")
    return params[:channels], params[channels:]


def _read_pool(reader: _Reader, name: str, window: int, stride: int) -> None:
    reader.seek_marker(name)
    found = tuple(reader.int() for _ in range(6))
    if found != (window, window, stride, stride, 0, 0):
        raise DlibFormatError(f"{name} {found} != {(window, window, stride, stride, 0, 0)}")


class _ConvAffine(nn.Module):
    """dlib's con + affine, folded into one convolution (the affine is per channel)."""

    def __init__(self, conv: _Conv, affine: tuple[np.ndarray, np.ndarray]) -> None:
        super().__init__()
        gamma, beta = affine
        outputs, inputs, kernel, _ = conv.weight.shape
        self.conv = nn.Conv2d(inputs, outputs, kernel, conv.stride, conv.padding)
        self.conv.weight = nn.Parameter(
            torch.from_numpy(conv.weight * gamma[:, None, None, None]), requires_grad=False
        )
        self.conv.bias = nn.Parameter(
            torch.from_numpy(conv.bias * gamma + beta), requires_grad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: both zero-padded (channels, rows, columns; at the end) to the larger."""
    if a.shape == b.shape:
        return a + b
    shape = [max(p, q) for p, q in zip(a.shape, b.shape, strict=True)]

    def pad(t: torch.Tensor) -> torch.Tensor:
        _, c, h, w = t.shape
        return F.pad(t, (0, shape[3] - w, 0, shape[2] - h, 0, shape[1] - c))

    return pad(a) + pad(b)


class _Block(nn.Module):
    def __init__(self, first: _ConvAffine, second: _ConvAffine, downsample: bool) -> None:
        super().__init__()
        self.first, self.second, self.downsample = first, second, downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.second(F.relu(self.first(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(_add_padded(out, shortcut))


class FaceDescriptorNet(nn.Module):
    """chips (N, 150, 150, 3) uint8 RGB -> descriptors (N, 128), as dlib computes them."""

    mean_rgb: torch.Tensor

    def __init__(self, mean_rgb: tuple[float, float, float], layers: list[nn.Module]) -> None:
        super().__init__()
        self.register_buffer("mean_rgb", torch.tensor(mean_rgb, dtype=torch.float32))
        self.stem = layers[0]
        self.blocks = nn.Sequential(*layers[1:-1])
        self.head = layers[-1]

    @classmethod
    def from_dlib(cls, path: Path) -> FaceDescriptorNet:
        """The network with the weights of dlib's `dlib_face_recognition_resnet_model_v1.dat`."""
        reader = _Reader(path.read_bytes())
        reader.seek_marker("input_rgb_image_sized")
        mean_rgb = (reader.float(), reader.float(), reader.float())
        if (reader.int(), reader.int()) != (CHIP_SIZE, CHIP_SIZE):
            raise DlibFormatError(f"input is not {CHIP_SIZE}x{CHIP_SIZE}")
        stem = _ConvAffine(_read_conv(reader, 3, 32, 7, 2), _read_affine(reader, 32))
        _read_pool(reader, "max_pool_2", 3, 2)
        layers: list[nn.Module] = [stem]
        inputs = 32
        for filters, count, downsamples in LEVELS:
            for index in range(count):
                down = downsamples and index == 0
                first = _ConvAffine(
                    _read_conv(reader, inputs, filters, 3, 2 if down else 1),
                    _read_affine(reader, filters),
                )
                second = _ConvAffine(
                    _read_conv(reader, filters, filters, 3, 1), _read_affine(reader, filters)
                )
                if down:
                    _read_pool(reader, "avg_pool_2", 2, 2)
                layers.append(_Block(first, second, down))
                inputs = filters
        _read_pool(reader, "avg_pool_2", 0, 1)  # avg_pool_everything
        reader.seek_marker("fc_2")
        outputs, fc_inputs = reader.int(), reader.int()
        weights = reader.tensor().reshape(-1)
        if (outputs, fc_inputs, weights.size) != (DESCRIPTOR_SIZE, inputs, inputs * outputs):
            raise DlibFormatError(f"fc {outputs}x{fc_inputs} of {weights.size} values")
        head = nn.Linear(inputs, outputs, bias=False)
        with torch.no_grad():
            # dlib stores (inputs, outputs) and computes x @ W.
            head.weight.copy_(torch.from_numpy(weights.reshape(inputs, outputs).T.copy()))
        layers.append(head)
        return cls(mean_rgb, layers).eval()

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        # dlib's input layer: (pixel - channel mean) / 256, channels first.
        x = (chips.float() - self.mean_rgb) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x.permute(0, 3, 1, 2))), 3, 2)
        x = self.blocks(x).mean(dim=(2, 3))
        out: torch.Tensor = self.head(x)
        return out


def describe(net: FaceDescriptorNet, chips: np.ndarray, device: str) -> np.ndarray:
    """Descriptors (N, 128) float32 of aligned chips (N, 150, 150, 3) uint8, on `device`.

    On a CPU oneDNN is switched on for the call: the engine turns it off process-wide so that
    renders are batch-invariant, which makes this network ~2.5x slower (85 vs 34 ms for 5
    chips, one thread); descriptors only meet a distance threshold, and oneDNN moves them by
    ~1e-7. The engine runs face work and renders on one worker thread, so the switch never
    overlaps a render.
    """
    batch = torch.from_numpy(np.ascontiguousarray(chips)).to(device)
    onednn = torch.backends.mkldnn.enabled
    if torch.device(device).type == "cpu":
        torch.backends.mkldnn.enabled = True  # type: ignore[assignment]
    try:
        with torch.inference_mode():
            out = net(batch)
    finally:
        torch.backends.mkldnn.enabled = onednn  # type: ignore[assignment]
    result: np.ndarray = out.float().cpu().numpy()
    return result
