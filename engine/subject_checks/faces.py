"""Face detection and identity embeddings with dlib, fully offline (the `faces` extra).

`dlib-bin` provides `dlib`; `face-recognition-models` ships the .dat weights. That package is
never imported: its `__init__` imports `pkg_resources`, which current setuptools no longer has.
Its folder is located with `importlib.util.find_spec` instead, which does not execute it.

The detector is dlib's HOG frontal-face detector (no weights file, ~0.1-0.3 s per photo on a
CPU). It fires on face-like things (badges, prints, machinery) with low scores, which is why it
returns scores and the policy in `inspect.py` looks at scores and sizes, never a bare count.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
FACE_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# dlib's documented rule for its 128-d descriptors: two faces closer than this (Euclidean) are
# the same person (99.38% on LFW).
SAME_PERSON_MAX_DISTANCE = 0.6

_logged_once: set[str] = set()
_logged_lock = threading.Lock()


def log_once(key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    """Log a message the first time `key` is seen in this process (missing extras, mainly)."""
    with _logged_lock:
        if key in _logged_once:
            return
        _logged_once.add(key)
    logger.log(level, message, *args)


@dataclass(frozen=True)
class FaceBox:
    """A detected face in pixel coordinates of the inspected image (right/bottom exclusive)."""

    left: int
    top: int
    right: int
    bottom: int
    score: float  # detector confidence; dlib HOG: ~0 borderline, >1 clear frontal face

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def side(self) -> float:
        """Edge of the square of the same area: one size figure for comparisons."""
        return math.sqrt(self.area)

    def expanded(self, margin: float, bounds: tuple[int, int]) -> tuple[int, int, int, int]:
        """A crop box around the face: `margin` x the face's width/height added on each side.

        `bounds` is the image's (width, height), as `PIL.Image.size`. A box that would cross an
        edge is first shifted back inside (so a face near the edge keeps the crop's size and
        shape, which the square image encoders prefer), and only clamped where it is larger than
        the image. Returns (left, top, right, bottom) for `Image.crop`.
        """
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        width, height = bounds
        if width < 1 or height < 1:
            raise ValueError(f"bounds must be a positive (width, height), got {bounds}")
        dx, dy = self.width * margin, self.height * margin
        left, right = _fit(self.left - dx, self.right + dx, width)
        top, bottom = _fit(self.top - dy, self.bottom + dy, height)
        return left, top, right, bottom


def _fit(low: float, high: float, limit: int) -> tuple[int, int]:
    if high - low >= limit:
        return 0, limit
    if low < 0:
        low, high = 0.0, high - low
    elif high > limit:
        low, high = low - (high - limit), float(limit)
    return max(0, round(low)), min(limit, round(high))


def _import_dlib() -> Any | None:
    try:
        return importlib.import_module("dlib")
    except ImportError:
        log_once(
            "dlib",
            "dlib is not installed: face checks are unavailable "
            "(install the `faces` extra: pip install 'avatarbot[faces]')",
        )
        return None


def models_dir() -> Path | None:
    """The folder holding face-recognition-models' .dat files, without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "models"
        if folder.is_dir():
            return folder
    return None


def _rgb_array(image: Image.Image) -> np.ndarray:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # dlib wants a C-contiguous uint8 HxWx3 array.
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


RECENT_DETECTIONS = 32


def _digest(image: Image.Image) -> bytes:
    """Identity of an image's pixels (mode and size included), for the detection cache."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.digest()


class FaceDetector:
    """dlib's HOG frontal-face detector, run on a reduced copy of the photo, with scores.

    Faces smaller than about 40 px in the working copy (at `upsample=1`) are not found; with
    the default 800 px working size that is ~5% of the photo's longer side.
    """

    def __init__(self, detector: Any, *, max_side: int = 800, upsample: int = 1) -> None:
        if max_side < 80:
            raise ValueError(f"max_side must be >= 80 (HOG's window), got {max_side}")
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self._detector = detector
        self.max_side = max_side
        self.upsample = upsample
        # One dlib object shared between threads: serialise calls rather than trust it.
        self._lock = threading.Lock()
        # Recent results by pixel digest: creating an avatar inspects its photos, then crops
        # the same photos around their faces to encode them; detecting twice doubled the time.
        self._recent: OrderedDict[tuple[bytes, float], list[FaceBox]] = OrderedDict()

    @classmethod
    def load(cls, *, max_side: int = 800, upsample: int = 1) -> FaceDetector | None:
        """The detector, or None (logged once) when dlib is not installed."""
        dlib = _import_dlib()
        if dlib is None:
            return None
        return cls(dlib.get_frontal_face_detector(), max_side=max_side, upsample=upsample)

    def detect(self, image: Image.Image, *, min_score: float = 0.0) -> list[FaceBox]:
        """Every candidate scoring at least `min_score` (dlib's default 0), best first.

        Boxes are in `image`'s pixel coordinates, clipped to it.
        """
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"cannot detect faces in an empty image ({width}x{height})")
        key = (_digest(image), min_score)
        with self._lock:
            if key in self._recent:
                self._recent.move_to_end(key)
                return list(self._recent[key])
        faces = self._detect(image, min_score)
        with self._lock:
            self._recent[key] = faces
            while len(self._recent) > RECENT_DETECTIONS:
                self._recent.popitem(last=False)
        return list(faces)

    def _detect(self, image: Image.Image, min_score: float) -> list[FaceBox]:
        width, height = image.size
        scale = min(1.0, self.max_side / max(width, height))
        work = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        pixels = _rgb_array(work)
        with self._lock:
            rects, scores, _ = self._detector.run(pixels, self.upsample, min_score)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            box = FaceBox(
                left=max(0, math.floor(rect.left() / scale)),
                top=max(0, math.floor(rect.top() / scale)),
                # dlib rectangles are inclusive; FaceBox's right/bottom are exclusive.
                right=min(width, math.ceil((rect.right() + 1) / scale)),
                bottom=min(height, math.ceil((rect.bottom() + 1) / scale)),
                score=float(score),
            )
            if box.width > 0 and box.height > 0:
                faces.append(box)
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces


class FaceEmbedder:
    """dlib's ResNet face descriptor (128-d) with 5-point alignment: identity similarity."""

    def __init__(self, dlib: Any, shape_predictor: Any, recognizer: Any) -> None:
        self._dlib = dlib
        self._shape_predictor = shape_predictor
        self._recognizer = recognizer
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> FaceEmbedder | None:
        """The embedder, or None (logged once) when dlib or the model files are missing."""
        dlib = _import_dlib()
        if dlib is None:
            return None
        folder = models_dir()
        missing = [
            name
            for name in (SHAPE_PREDICTOR_FILE, FACE_RECOGNITION_FILE)
            if folder is None or not (folder / name).is_file()
        ]
        if folder is None or missing:
            log_once(
                "face_recognition_models",
                "face-recognition-models is not installed or lacks %s: face embeddings are "
                "unavailable (install the `faces` extra: pip install 'avatarbot[faces]')",
                ", ".join(missing),
            )
            return None
        return cls(
            dlib,
            dlib.shape_predictor(str(folder / SHAPE_PREDICTOR_FILE)),
            dlib.face_recognition_model_v1(str(folder / FACE_RECOGNITION_FILE)),
        )

    def embed(self, image: Image.Image, box: FaceBox) -> np.ndarray:
        """The 128-d float32 descriptor of the face in `box` (coordinates in `image`)."""
        if box.width <= 0 or box.height <= 0:
            raise ValueError(f"empty face box {box}")
        pixels = _rgb_array(image)
        rect = self._dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
        with self._lock:
            shape = self._shape_predictor(pixels, rect)
            descriptor = self._recognizer.compute_face_descriptor(pixels, shape)
        return np.asarray(descriptor, dtype=np.float32)


def face_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between descriptors; < SAME_PERSON_MAX_DISTANCE means same person."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def face_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity between descriptors (higher = more alike).

    dlib descriptors are not centred, so unrelated faces still score ~0.8-0.9 and the same
    face ~0.99: compare similarities with each other, and use `face_distance` with
    SAME_PERSON_MAX_DISTANCE for a same-person decision.
    """
    va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norm = float(np.linalg.norm(va) * np.linalg.norm(vb))
    if norm == 0.0:
        raise ValueError("cannot compare an all-zero face descriptor")
    return float(va @ vb / norm)


def same_person(a: np.ndarray, b: np.ndarray) -> bool:
    return face_distance(a, b) < SAME_PERSON_MAX_DISTANCE
