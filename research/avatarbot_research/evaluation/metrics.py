"""Scores of a render against its references: identity (pluggable) and CLIP (optional).

An identity metric is anything with a ``name`` and ``similarity(image, references)``: a float
(higher = more like the references) or None when it cannot score the image (for faces: no face
in the render). Two ship or are looked up here:

- ``face``: dlib's 128-d face descriptors (engine.subject_checks), offline. The score is
  ``1 - mean Euclidean distance`` from the render's face to each reference face, clipped to
  [0, 1]. dlib calls two faces the same person below distance 0.6, so above 0.4 here.
- ``toy``: ``avatarbot_research.toyworld.metrics.ToyIdentity``, imported only when asked for; its
  module's ``scene_class`` also names the place each render shows.

``ClipScorer`` reads a local transformers CLIP folder: text score (cosine between the render
and its prompt) and image score (cosine between the render and the references' mean). Both
are raw cosines of the projected embeddings, not the rescaled "CLIPScore".
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from engine.errors import EngineError

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from engine.subject_checks import FaceDetector, FaceEmbedder

METRIC_NAMES = ("face", "toy", "none")


class MetricUnavailable(EngineError):
    """A metric that cannot run here (a missing extra, module or model folder)."""


@runtime_checkable
class IdentityMetric(Protocol):
    """How much a render shows the references' subject; None when it cannot tell."""

    name: str

    def similarity(self, image: Image, references: Sequence[Image]) -> float | None: ...


def _digest(image: Image) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.digest()


class FaceIdentity:
    """Identity of persons from dlib face descriptors (see the module doc for the score)."""

    name = "face"
    description = (
        "1 - mean dlib face-descriptor distance from the render's main face to each reference "
        "face, clipped to [0, 1]; None when the render shows no face"
    )

    def __init__(self, detector: FaceDetector, embedder: FaceEmbedder) -> None:
        from engine.subject_checks import SAME_PERSON_MAX_DISTANCE

        self._detector = detector
        self._embedder = embedder
        # Above this score the render is, on average, the references' person by dlib's rule.
        self.match_threshold = 1.0 - SAME_PERSON_MAX_DISTANCE
        self._descriptors: dict[bytes, np.ndarray | None] = {}

    @classmethod
    def load(cls) -> FaceIdentity:
        from engine.subject_checks import FaceDetector, FaceEmbedder

        detector, embedder = FaceDetector.load(), FaceEmbedder.load()
        if detector is None or embedder is None:
            raise MetricUnavailable(
                "the face metric needs dlib and its models: pip install 'avatarbot[faces]'"
            )
        return cls(detector, embedder)

    def descriptor(self, image: Image) -> np.ndarray | None:
        """The main face's descriptor (the intake's choice of face), or None without one."""
        from engine.subject_checks import select_faces

        key = _digest(image)
        if key not in self._descriptors:
            faces = select_faces(self._detector.detect(image))
            self._descriptors[key] = self._embedder.embed(image, faces[0]) if faces else None
        return self._descriptors[key]

    def faces_found(self, images: Sequence[Image]) -> list[bool]:
        return [self.descriptor(image) is not None for image in images]

    def similarity(self, image: Image, references: Sequence[Image]) -> float | None:
        from engine.subject_checks import face_distance

        wanted = [d for d in (self.descriptor(r) for r in references) if d is not None]
        face = self.descriptor(image)
        if face is None or not wanted:
            return None
        mean = sum(face_distance(face, ref) for ref in wanted) / len(wanted)
        return min(1.0, max(0.0, 1.0 - mean))


def load_identity_metric(name: str) -> IdentityMetric | None:
    """The metric called ``name`` (``METRIC_NAMES``); None for ``none``. Raises
    ``MetricUnavailable`` when its module or models are not installed."""
    if name == "none":
        return None
    if name == "face":
        return FaceIdentity.load()
    if name == "toy":
        try:
            module = importlib.import_module("avatarbot_research.toyworld.metrics")
        except ImportError as exc:
            raise MetricUnavailable(
                f"the toy metric needs avatarbot_research.toyworld.metrics, which cannot be "
                f"imported here ({exc})"
            ) from exc
        metric: IdentityMetric = module.ToyIdentity()
        return metric
    raise MetricUnavailable(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}")


def scene_classifier(metric: IdentityMetric | None) -> Callable[[Image], str] | None:
    """The metric's ``scene_class(image) -> str`` (its own method, else its module's function,
    as the toy world has), or None."""
    if metric is None:
        return None
    method = getattr(metric, "scene_class", None)
    if callable(method):
        return cast("Callable[[Image], str]", method)
    function = getattr(sys.modules.get(type(metric).__module__), "scene_class", None)
    return cast("Callable[[Image], str]", function) if callable(function) else None


class ClipScorer:
    """CLIP text and image scores from a local transformers CLIP folder."""

    def __init__(self, model: Any, processor: Any, device: Any) -> None:
        self._model = model
        self._processor = processor
        self._device = device
        self._references: dict[tuple[bytes, ...], Any] = {}

    @classmethod
    def load(cls, folder: Path, device: Any = "cpu") -> ClipScorer:
        """Load ``folder`` (a ``save_pretrained`` CLIPModel with its processor) without
        touching the network. Raises ``MetricUnavailable`` naming what is wrong."""
        if not (folder / "config.json").is_file():
            raise MetricUnavailable(
                f"{folder} is not a CLIP model folder (no config.json); download one with "
                f"`hf download openai/clip-vit-large-patch14 --local-dir {folder}`"
            )
        try:
            from transformers import AutoProcessor, CLIPModel

            model = CLIPModel.from_pretrained(folder, local_files_only=True)
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MetricUnavailable(f"cannot load the CLIP model in {folder}: {first}") from exc
        return cls(model.eval().to(device), processor, device)

    def _embed_images(self, images: Sequence[Image]) -> Any:
        import torch

        inputs = self._processor(images=list(images), return_tensors="pt").to(self._device)
        with torch.inference_mode():
            out = self._model.get_image_features(pixel_values=inputs["pixel_values"])
        return torch.nn.functional.normalize(_pooled(out).float(), dim=-1)

    def _embed_text(self, text: str) -> Any:
        import torch

        limit = int(self._model.config.text_config.max_position_embeddings)
        inputs = self._processor(
            text=[text], return_tensors="pt", padding=True, truncation=True, max_length=limit
        ).to(self._device)
        with torch.inference_mode():
            out = self._model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
            )
        return torch.nn.functional.normalize(_pooled(out).float(), dim=-1)

    def text_score(self, image: Image, prompt: str) -> float:
        """Cosine between the image and the prompt (-1..1; real CLIP: ~0.2-0.35 on match)."""
        return float((self._embed_images([image]) @ self._embed_text(prompt).T).item())

    def image_score(self, image: Image, references: Sequence[Image]) -> float:
        """Cosine between the image and the mean of the references' unit embeddings."""
        import torch

        key = tuple(_digest(r) for r in references)
        if key not in self._references:
            mean = self._embed_images(references).mean(dim=0, keepdim=True)
            self._references[key] = torch.nn.functional.normalize(mean, dim=-1)
        return float((self._embed_images([image]) @ self._references[key].T).item())


def _pooled(out: Any) -> Any:
    """transformers 4 returns the projected features as a tensor; 5 as ``pooler_output``."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output
