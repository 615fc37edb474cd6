"""Engine value types: validation and the features' byte format (no models needed)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save

from engine import (
    ConceptFeatures,
    ConceptKind,
    CorruptFeatures,
    InvalidRequest,
    RenderRequest,
    StaleFeatures,
)


def _features(**overrides: object) -> ConceptFeatures:
    values: dict[str, object] = {
        "encoder_id": "enc:1",
        "kind": ConceptKind.PERSON,
        "tensors": {"image_embeds": torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)},
        "photo_count": 2,
    }
    values.update(overrides)
    return ConceptFeatures(**values)  # type: ignore[arg-type]


def test_features_round_trip_keeps_everything() -> None:
    features = _features(kind="pet")
    back = ConceptFeatures.from_bytes(features.to_bytes())
    assert back.encoder_id == "enc:1"
    assert back.kind is ConceptKind.PET
    assert back.photo_count == 2
    assert back.format_version == 1
    assert torch.equal(back.tensors["image_embeds"], features.tensors["image_embeds"])


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"\xff" * 64, struct.pack("<Q", 10**12) + b"{}"],
    ids=["empty", "text", "binary", "huge-header"],
)
def test_unreadable_bytes_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptFeatures):
        ConceptFeatures.from_bytes(data)


def test_foreign_safetensors_are_corrupt() -> None:
    foreign = save({"weight": torch.zeros(2)}, metadata={"format": "pt"})
    with pytest.raises(CorruptFeatures, match="not avatarbot"):
        ConceptFeatures.from_bytes(foreign)


def test_truncated_features_are_corrupt() -> None:
    data = _features().to_bytes()
    with pytest.raises(CorruptFeatures):
        ConceptFeatures.from_bytes(data[: len(data) - 7])


def test_broken_metadata_is_corrupt() -> None:
    data = _features().to_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"]["kind"] = "zombie"  # as long as "person": offsets stay valid
    text = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    with pytest.raises(CorruptFeatures, match="metadata"):
        ConceptFeatures.from_bytes(data[:8] + text + data[8 + length :])


def test_other_format_version_is_stale_not_corrupt() -> None:
    newer = ConceptFeatures.from_bytes(_features().to_bytes())
    object.__setattr__(newer, "format_version", 2)
    with pytest.raises(StaleFeatures) as info:
        ConceptFeatures.from_bytes(newer.to_bytes())
    assert info.value.got == "format 2"


def test_require_encoder_refuses_other_ids() -> None:
    features = _features()
    features.require_encoder("enc:1")
    with pytest.raises(StaleFeatures) as info:
        features.require_encoder("enc:2")
    assert (info.value.expected, info.value.got) == ("enc:2", "enc:1")


def test_features_need_photos_and_tensors() -> None:
    with pytest.raises(InvalidRequest):
        _features(photo_count=0)
    with pytest.raises(InvalidRequest):
        _features(tensors={})


@pytest.mark.parametrize(
    "field, value",
    [
        ("prompt", "  "),
        ("width", 100),
        ("width", 32),
        ("height", 4096),
        ("steps", 0),
        ("guidance", float("nan")),
        ("seed", -1),
        ("count", 5),
        ("count", 0),
        ("identity_strength", 1.5),
        ("scheduler", "magic"),
        ("extra", {"alpha": float("inf")}),
    ],
)
def test_render_request_validation(field: str, value: object) -> None:
    values: dict[str, object] = {"prompt": "a cat", field: value}
    with pytest.raises(InvalidRequest, match=field.split("_")[0]):
        RenderRequest(**values)  # type: ignore[arg-type]


def test_render_request_seeds_and_batch_key() -> None:
    request = RenderRequest(prompt="a cat", seed=10, count=3, extra={"beta": 0.3})
    assert request.seeds == [10, 11, 12]
    other = RenderRequest(prompt="a dog", seed=1, identity_strength=0.1)
    assert request.batch_key == other.batch_key
    assert RenderRequest(prompt="a", width=64).batch_key != other.batch_key
    assert request.extra["beta"] == 0.3


def test_importing_the_types_does_not_load_torch() -> None:
    code = "import sys, engine; engine.RenderRequest(prompt='x'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
