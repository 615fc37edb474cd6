"""Face detection and identity embeddings with dlib, fully offline (the `faces` extra).

`dlib-bin` provides `dlib`; `face-recognition-models` ships the .dat weights. That package is
never imported: its `__init__` imports `pkg_resources`, which current setuptools no longer has.
Its folder is located with `importlib.util.find_spec` instead, which does not execute it.

The detector is dlib's HOG frontal-face detector (no weights file). It fires on face-like things
(badges, prints, machinery) with low scores, which is why it returns scores and the policy in
`inspect.py` looks at scores and sizes, never a bare count. The descriptor is dlib's ResNet,
run in torch (`face_net.py`) from dlib's weights file; landmarks and the aligned chip are dlib's.

Where the time goes (5 photos of 512 px, this project's 2-core CPU, Dec 2026): HOG on the full
pass (a 1024-px working image) ~0.10 s per photo, on the quick 320-px pass ~3 ms; landmarks
0.7 ms and the aligned chip 0.4 ms per face; the descriptor ~107 ms per face in dlib-bin (built
without BLAS), ~7 ms per face in torch as a batch of 5 (one thread, oneDNN on).

No thread pool: dlib's Python bindings hold the GIL while they work. Measured: HOG on one 512-px
photo 8 times serially 0.41 s, the same work split over 2 threads 0.45 s; dlib's descriptor
0.87 s vs 0.70 s. The torch descriptor already takes the photos as one batch.

GPU: the descriptor network runs on the engine's device (`FaceEmbedder.load(device=...)`), so a
CUDA profile computes descriptors on the GPU. Detection stays dlib's HOG on the CPU: dlib-bin has
no CUDA, and a torch detector would be another detector, with other scores and sizes than the
ones the face policy (`inspect.py`) and its tests are calibrated on; a CUDA build of dlib's MMOD
detector would need a dlib built from source on the GPU machine. With the quick and targeted
passes, a photo whose face box is at least about a third of its longer side (a selfie) costs
~3-20 ms of HOG; the full pass (~0.1 s per photo) is paid for smaller faces, such as the
benchmark's (17 %), where it is what guarantees that a rival of half the subject's size is seen.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from engine.subject_checks.face_net import FaceDescriptorNet

logger = logging.getLogger(__name__)

SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
FACE_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# dlib's documented rule for its 128-d descriptors: two faces closer than this (Euclidean) are
# the same person (99.38% on LFW).
SAME_PERSON_MAX_DISTANCE = 0.6

_logged_once: set[str] = set()
_logged_lock = threading.Lock()


def log_once(key: str, message: str, *args: object) -> None:
    """Log a message the first time `key` is seen in this process (missing extras, mainly)."""
    with _logged_lock:
        if key in _logged_once:
            return
        _logged_once.add(key)
    logger.warning(message, *args)


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
# The descriptor network's input: dlib's aligned face chip, as `compute_face_descriptor` cuts it.
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def _digest(image: Image.Image) -> bytes:
    """Identity of an image's pixels (mode and size included), for the detection cache."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.digest()


# HOG's detection window: at upsample 0, faces smaller than about this many pixels of the working
# image are not found (dlib's documentation says "about 80x80").
HOG_WINDOW = 80
# Another face at least this fraction of the subject's side is another subject (`inspect.py`'s
# `several_faces`); the quick pass's guarantee is built on it.
PROMINENT_FACE_RATIO = 0.5
# The quick pass's working size (longest side) and how large its subject must be to settle it.
QUICK_SIDE = 320
QUICK_PRIMARY_MIN = 2 * HOG_WINDOW
# A subject the quick pass found too small to settle gets a pass sized for it, TARGET_MARGIN x
# the size that would settle it, when that copy's side is at most TARGET_MAX_SIDE x the full
# pass's (a third of its pixels); else the full pass follows the quick one directly.
TARGET_MARGIN = 1.25
TARGET_MAX_SIDE = 0.6
# The full pass's working size (longest side) and HOG upsampling.
FULL_SIDE = 800
FULL_UPSAMPLE = 1


class FaceDetector:
    """dlib's HOG frontal-face detector, run on reduced copies of the photo, with scores.

    Up to three passes, each only when the one before cannot settle the photo:
    - quick: a copy of longest side `quick_side` (320), upsample 0. If the subject it finds (the
      primary as `select_faces` picks it) is at least 2 x HOG's 80-px window there, every face of
      at least half the subject's side is >= 80 px in that copy and so detectable too: the
      `several_faces` rule (`prominent_face_ratio` 0.5) and the choice of the primary (among
      faces of at least half the largest's side) see all the faces they would in the full pass.
      What the quick pass can miss: faces smaller than half the subject's, i.e. background faces
      (only the `background_faces` warning, never a problem), and low-scoring false positives of
      that size (which the policy ignores anyway). HOG's boxes come in pyramid steps (x 6/5)
      that fall differently at the two scales: a second face within about one step of half the
      subject's side can be a rival (`several_faces`) in one pass and background in the other
      (measured: faces of 0.54 x the subject's side were 0.58 x in the quick pass and 0.49 x in
      the full one); clearer cases agree.
    - targeted: when the quick pass found a subject too small to settle it, a copy sized so that
      this subject would measure 1.25 x 160 px, upsample 0, if that copy is much smaller than the
      full pass's (side <= 0.6 x); settled by the same rule, on that pass's own faces. A selfie
      whose face box is 30-50 % of the photo's side settles here.
    - full: a copy of longest side `FULL_SIDE` (800) with upsample 1, as before the quick pass
      existed: faces down to about 40 px of that copy (~5 % of the photo's longer side).
    Results are remembered by pixel digest: creating an avatar inspects its photos, then crops
    the same photos around their faces to encode them, and must not detect twice.
    """

    def __init__(self, detector: Any, *, quick_side: int | None = QUICK_SIDE) -> None:
        if quick_side is not None and quick_side < QUICK_PRIMARY_MIN:
            raise ValueError(f"quick_side must be >= {QUICK_PRIMARY_MIN}, got {quick_side}")
        self._detector = detector
        self.quick_side = quick_side
        # One dlib object shared between threads: serialise calls rather than trust it.
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[bytes, float], list[FaceBox]] = OrderedDict()

    @classmethod
    def load(cls, *, quick_side: int | None = QUICK_SIDE) -> FaceDetector | None:
        """The detector, or None (logged once) when dlib is not installed."""
        dlib = _import_dlib()
        if dlib is None:
            return None
        return cls(dlib.get_frontal_face_detector(), quick_side=quick_side)

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
        longest = max(image.size)
        if self.quick_side is not None and longest > self.quick_side:
            faces, scale = self._run(image, self.quick_side, 0, min_score)
            if _settles(faces, scale):
                return faces
            primary = primary_face(faces, PROMINENT_FACE_RATIO)
            full_side = min(longest, FULL_SIDE) * 2**FULL_UPSAMPLE
            if primary is not None:
                # A copy in which this subject would settle, with a margin: HOG's boxes are
                # coarse near its window, and a face can measure a pyramid step smaller there.
                side = round(longest * TARGET_MARGIN * QUICK_PRIMARY_MIN / primary.side)
                if side <= TARGET_MAX_SIDE * full_side:
                    faces, scale = self._run(image, side, 0, min_score, enlarge=True)
                    if _settles(faces, scale):
                        return faces
        faces, _ = self._run(image, FULL_SIDE, FULL_UPSAMPLE, min_score)
        return faces

    def _run(
        self,
        image: Image.Image,
        side: int,
        upsample: int,
        min_score: float,
        *,
        enlarge: bool = False,
    ) -> tuple[list[FaceBox], float]:
        """One HOG pass on a copy of longest side `side` (at most the image's own unless
        `enlarge`); boxes in `image`'s pixels, and the scale of the working copy."""
        width, height = image.size
        scale = side / max(width, height)
        if not enlarge:
            scale = min(1.0, scale)
        work = image
        if scale != 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        pixels = _rgb_array(work)
        with self._lock:
            rects, scores, _ = self._detector.run(pixels, upsample, min_score)
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
        return faces, scale


def primary_face(pool: Sequence[FaceBox], prominent_ratio: float) -> FaceBox | None:
    """The subject among candidates: the best-scoring of the *prominent* ones, those whose side
    is >= `prominent_ratio` x the largest's (so a small clear face cannot displace it)."""
    if not pool:
        return None
    largest = max(f.side for f in pool)
    prominent = [f for f in pool if f.side >= prominent_ratio * largest]
    return max(prominent, key=lambda f: (f.score, f.area))


def _settles(faces: Sequence[FaceBox], scale: float) -> bool:
    """Whether a quick pass's subject is large enough that the full pass could add no face the
    policy counts as a subject or a rival (see `FaceDetector`)."""
    primary = primary_face(faces, PROMINENT_FACE_RATIO)
    return primary is not None and primary.side * scale >= QUICK_PRIMARY_MIN


class FaceEmbedder:
    """dlib's ResNet face descriptor (128-d) with 5-point alignment: identity similarity.

    Landmarks and the aligned 150x150 chip are dlib's (`shape_predictor`, `get_face_chip` with
    dlib's own padding 0.25, as `compute_face_descriptor` does); the network runs in torch
    (`face_net.py`) on `device`, several faces as one batch.
    """

    def __init__(
        self, dlib: Any, shape_predictor: Any, net: FaceDescriptorNet, device: str = "cpu"
    ) -> None:
        self._dlib = dlib
        self._shape_predictor = shape_predictor
        self._net = net.to(device)
        self.device = device
        self._lock = threading.Lock()

    @classmethod
    def load(cls, *, device: str = "cpu") -> FaceEmbedder | None:
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
        # torch only here: the rest of the subject checks (and the bot's CLI) import without it.
        from engine.subject_checks.face_net import FaceDescriptorNet

        return cls(
            dlib,
            dlib.shape_predictor(str(folder / SHAPE_PREDICTOR_FILE)),
            FaceDescriptorNet.from_dlib(folder / FACE_RECOGNITION_FILE),
            device,
        )

    def embed(self, image: Image.Image, box: FaceBox) -> np.ndarray:
        """The 128-d float32 descriptor of the face in `box` (coordinates in `image`)."""
        return self.embed_many([(image, box)])[0]

    def embed_many(self, faces: Sequence[tuple[Image.Image, FaceBox]]) -> np.ndarray:
        """Descriptors (N, 128) float32 of each (image, face box), computed as one batch."""
        if not faces:
            return np.zeros((0, 128), dtype=np.float32)
        chips = np.stack([self._chip(image, box) for image, box in faces])
        from engine.subject_checks.face_net import describe

        return describe(self._net, chips, self.device)

    def _chip(self, image: Image.Image, box: FaceBox) -> np.ndarray:
        if box.width <= 0 or box.height <= 0:
            raise ValueError(f"empty face box {box}")
        pixels = _rgb_array(image)
        rect = self._dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
        with self._lock:
            shape = self._shape_predictor(pixels, rect)
            chip: np.ndarray = self._dlib.get_face_chip(pixels, shape, CHIP_SIZE, CHIP_PADDING)
        return chip


def face_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between descriptors; < SAME_PERSON_MAX_DISTANCE means same person."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
