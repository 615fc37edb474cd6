"""The output check: every rendered image is checked before anyone sees it
(docs/architecture.md#safety-in-layers).

- ``NudeNetChecker``: nudenet's detector (its ONNX model ships inside the package, runs offline,
  loads in ~0.1 s). Per image, the highest score of each label it reports; the image is flagged
  when any configured class reaches the threshold (threshold 0 flags every image: that is how
  tests exercise the blocking path with the real detector).
- ``DiffusersSafetyChecker``: diffusers' ``StableDiffusionSafetyChecker``, run as well when the
  profile's model folder ships one (``safety_checker/`` + ``feature_extractor/``, as in
  stable-diffusion-v1-5); the pipelines themselves render with ``safety_checker=None``.

``OutputChecker`` combines them. It fails closed: a checker that cannot load raises
``SafetyCheckUnavailable`` and the render fails; no unchecked image is ever returned as checked.
Models load lazily, once per checker (one per engine), under a lock; the check is CPU/GPU work
that callers run off the event loop (the engine's worker thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

NUDENET = "nudenet"
DIFFUSERS_SAFETY_CHECKER = "diffusers-safety-checker"
# The score recorded for the diffusers checker (it answers yes/no: 1.0 or 0.0).
DIFFUSERS_NSFW_SCORE = "SD_SAFETY_CHECKER_NSFW"

DEFAULT_THRESHOLD = 0.45
DEFAULT_CLASSES: tuple[str, ...] = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)


class SafetyCheckUnavailable(EngineError):
    """An output checker could not load or run: renders fail rather than go unchecked."""


@dataclass(frozen=True)
class SafetyPolicy:
    """When nudenet's scores flag an image: any of ``classes`` at ``threshold`` or above."""

    threshold: float = DEFAULT_THRESHOLD
    classes: tuple[str, ...] = DEFAULT_CLASSES


@dataclass(frozen=True)
class SafetyVerdict:
    """One image's verdict: flagged or not, each label's highest score, the checks that ran."""

    flagged: bool
    scores: dict[str, float] = field(default_factory=dict)
    checkers: tuple[str, ...] = ()


def _rgb_array(image: Image) -> Any:
    """The image as the contiguous BGR uint8 array nudenet reads (what ``cv2.imread`` of the
    same image as a file would give it): no temporary file."""
    import numpy as np

    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


class NudeNetChecker:
    """nudenet's detector with a policy; the detector loads on first use, once."""

    name = NUDENET

    def __init__(
        self, threshold: float = DEFAULT_THRESHOLD, classes: Sequence[str] = DEFAULT_CLASSES
    ) -> None:
        self.policy = SafetyPolicy(float(threshold), tuple(classes))
        self._detector: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the detector now (idempotent); ``SafetyCheckUnavailable`` if it cannot."""
        with self._lock:
            if self._detector is not None:
                return
            try:
                from nudenet import NudeDetector

                self._detector = NudeDetector()
            except Exception as exc:
                raise SafetyCheckUnavailable(f"nudenet could not load: {exc}") from exc

    def scores(self, image: Image) -> dict[str, float]:
        """Each label nudenet reports in ``image`` with its highest score."""
        self.load()
        try:
            detections = self._detector.detect(_rgb_array(image))
        except Exception as exc:
            raise SafetyCheckUnavailable(f"nudenet failed on an image: {exc}") from exc
        scores: dict[str, float] = {}
        for detection in detections:
            label, score = str(detection["class"]), float(detection["score"])
            scores[label] = max(scores.get(label, 0.0), round(score, 4))
        return scores

    def flags(self, scores: dict[str, float], policy: SafetyPolicy | None = None) -> bool:
        policy = policy or self.policy
        worst = max((scores.get(c, 0.0) for c in policy.classes), default=0.0)
        return worst >= policy.threshold

    def check(
        self, images: Sequence[Image], policy: SafetyPolicy | None = None
    ) -> list[SafetyVerdict]:
        scored = [self.scores(image) for image in images]
        return [SafetyVerdict(self.flags(s, policy), s, (self.name,)) for s in scored]


def has_diffusers_safety_checker(folder: Path) -> bool:
    """A diffusers model folder that ships the safety checker and its feature extractor."""
    return (folder / "safety_checker" / "config.json").is_file() and (
        folder / "feature_extractor" / "preprocessor_config.json"
    ).is_file()


def safety_checker_folder(base_model: str | None, *, cache_dir: str | None = None) -> Path | None:
    """The local diffusers folder of ``base_model`` when it holds the safety checker: the
    folder itself, or a hub id's cached snapshot (never downloaded here). None for random
    weights, single checkpoint files, and folders without a checker."""
    if not base_model:
        return None
    from engine.loading import is_single_file, looks_local

    if is_single_file(base_model):
        return None
    if looks_local(base_model):
        folder = Path(base_model).expanduser()
    else:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(
                snapshot_download(
                    base_model,
                    cache_dir=cache_dir,
                    local_files_only=True,
                    allow_patterns=["safety_checker/*", "feature_extractor/*"],
                )
            )
        except Exception:
            logger.debug("no cached snapshot of %s", base_model, exc_info=True)
            return None
    return folder if has_diffusers_safety_checker(folder) else None


class DiffusersSafetyChecker:
    """diffusers' ``StableDiffusionSafetyChecker`` from a model folder; yes/no per image."""

    name = DIFFUSERS_SAFETY_CHECKER

    def __init__(self, folder: Path, *, device: str = "cpu", dtype: Any = None) -> None:
        self.folder = folder
        self._device = device
        self._dtype = dtype
        self._model: Any = None
        self._processor: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            try:
                import torch
                from diffusers.pipelines.stable_diffusion.safety_checker import (
                    StableDiffusionSafetyChecker,
                )
                from transformers import CLIPImageProcessor

                processor = CLIPImageProcessor.from_pretrained(
                    self.folder / "feature_extractor", local_files_only=True
                )
                model: Any = StableDiffusionSafetyChecker.from_pretrained(
                    self.folder / "safety_checker", local_files_only=True
                )
                model = model.to(self._device, dtype=self._dtype or torch.float32).eval()
            except Exception as exc:
                raise SafetyCheckUnavailable(
                    f"the diffusers safety checker in {self.folder} could not load: {exc}"
                ) from exc
            self._processor, self._model = processor, model

    def check(self, images: Sequence[Image]) -> list[bool]:
        """True for each image the checker finds NSFW."""
        if not images:
            return []
        self.load()
        try:
            import numpy as np
            import torch

            pixels = self._processor([i.convert("RGB") for i in images], return_tensors="pt")
            clip_input = pixels.pixel_values.to(self._model.device, dtype=self._model.dtype)
            placeholders = np.zeros((len(images), 1, 1, 3), dtype=np.float32)
            with torch.no_grad():
                _, has_nsfw = self._model(clip_input=clip_input, images=placeholders)
        except Exception as exc:
            raise SafetyCheckUnavailable(f"the diffusers safety checker failed: {exc}") from exc
        return [bool(x) for x in has_nsfw]


class OutputChecker:
    """Every check an engine runs on its outputs; one per engine (models load once)."""

    def __init__(
        self,
        nudenet: NudeNetChecker | None = None,
        diffusers: DiffusersSafetyChecker | None = None,
    ) -> None:
        self.nudenet = nudenet or NudeNetChecker()
        self.diffusers = diffusers

    def load(self) -> None:
        self.nudenet.load()
        if self.diffusers is not None:
            self.diffusers.load()

    def check(
        self, images: Sequence[Image], policy: SafetyPolicy | None = None
    ) -> list[SafetyVerdict]:
        """One verdict per image, in order; raises ``SafetyCheckUnavailable`` (fail closed)."""
        verdicts = self.nudenet.check(images, policy)
        if self.diffusers is None:
            return verdicts
        nsfw = self.diffusers.check(images)
        return [
            SafetyVerdict(
                flagged=v.flagged or bad,
                scores={**v.scores, DIFFUSERS_NSFW_SCORE: 1.0 if bad else 0.0},
                checkers=(NUDENET, DIFFUSERS_SAFETY_CHECKER),
            )
            for v, bad in zip(verdicts, nsfw, strict=True)
        ]
