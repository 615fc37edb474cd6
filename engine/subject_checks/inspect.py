"""The per-photo verdict: faces, sharpness, exposure -> problems (blocking) and warnings.

Face policy (HOG finds real faces and, with low scores, face-like things):
- Candidates are detections scoring >= `min_face_score` (dlib's own default, 0).
- The *primary* face (the subject) is the best-scoring candidate among the *prominent* ones:
  those whose side is >= `prominent_face_ratio` of the largest candidate's. So a clear but
  small face in the background cannot displace the subject, and among two similar-sized boxes
  the real face beats a badge or a print.
- Any other candidate is reported only if it scores >= `min_other_face_score`: the false
  positives seen on real photos (an astronaut's mission patch, motorcycle parts) score 0.1 or
  less, real faces mostly well above 0.5. Reported faces whose side is >= `prominent_face_ratio`
  of the primary's are another subject: `several_faces` (blocking for a person). Smaller ones
  are background faces (a crowd behind the subject): the warning `background_faces`.
- `face_too_small`: the primary face's side is < `min_face_fraction` of the photo's shorter
  side. Faces below ~5% of the longer side are not detected at all and give `no_face`.
`PhotoReport.faces` is (primary, other reported faces largest first); empty when none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from PIL import Image

from engine.subject_checks.faces import (
    PROMINENT_FACE_RATIO,
    FaceBox,
    FaceDetector,
    FaceEmbedder,
    log_once,
    primary_face,
)
from engine.subject_checks.image_stats import measure
from kinds import SubjectKind

logger = logging.getLogger(__name__)

PERSON = SubjectKind.PERSON.value
KNOWN_KINDS = frozenset(kind.value for kind in SubjectKind)

# Blocking problem codes (stable: the service maps them to refusals).
NO_FACE = "no_face"
SEVERAL_FACES = "several_faces"
FACE_TOO_SMALL = "face_too_small"
TOO_BLURRY = "too_blurry"
TOO_DARK = "too_dark"
TOO_BRIGHT = "too_bright"
PROBLEM_CODES = (NO_FACE, SEVERAL_FACES, FACE_TOO_SMALL, TOO_BLURRY, TOO_DARK, TOO_BRIGHT)

# Non-blocking warning codes.
FACE_CHECK_UNAVAILABLE = "face_check_unavailable"
BACKGROUND_FACES = "background_faces"
SOFT = "soft"
DARK = "dark"
BRIGHT = "bright"
LOW_CONTRAST = "low_contrast"
SHADOWS_CLIPPED = "shadows_clipped"
HIGHLIGHTS_CLIPPED = "highlights_clipped"
WARNING_CODES = (
    FACE_CHECK_UNAVAILABLE,
    BACKGROUND_FACES,
    SOFT,
    DARK,
    BRIGHT,
    LOW_CONTRAST,
    SHADOWS_CLIPPED,
    HIGHLIGHTS_CLIPPED,
)


@dataclass(frozen=True)
class SubjectThresholds:
    """Where the checks draw their lines. Calibrated on scikit-image's photos (see tests)."""

    # Faces.
    min_face_score: float = 0.0  # a detection below this is not a face at all
    min_other_face_score: float = 0.5  # a face besides the primary must be this confident
    # Side vs. the primary's: another subject, not background (the quick detection pass's
    # guarantee assumes the default, see FaceDetector).
    prominent_face_ratio: float = PROMINENT_FACE_RATIO
    min_face_fraction: float = 0.12  # primary face side vs. the photo's shorter side
    # Sharpness: variance of the Laplacian on luma 0..255, shorter side resized to 512.
    # A sharp portrait scores hundreds, scikit-image's (upscaled, furry) cat ~40, any photo
    # after a Gaussian blur of radius 3+ below 10.
    min_sharpness: float = 15.0
    soft_sharpness: float = 40.0  # below: warning `soft`
    # Exposure: mean luma 0..1.
    min_exposure: float = 0.10
    max_exposure: float = 0.92
    dark_exposure: float = 0.22  # below: warning `dark`
    bright_exposure: float = 0.80  # above: warning `bright`
    min_contrast: float = 0.06  # luma standard deviation; below: warning `low_contrast`
    max_clipped: float = 0.25  # fraction crushed/blown above which a warning is given

    def __post_init__(self) -> None:
        for name in ("prominent_face_ratio", "min_face_fraction", "max_clipped"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        if not 0.0 <= self.min_exposure <= self.dark_exposure <= 1.0:
            raise ValueError("need 0 <= min_exposure <= dark_exposure <= 1")
        if not 0.0 <= self.bright_exposure <= self.max_exposure <= 1.0:
            raise ValueError("need 0 <= bright_exposure <= max_exposure <= 1")
        if not 0.0 <= self.min_sharpness <= self.soft_sharpness:
            raise ValueError("need 0 <= min_sharpness <= soft_sharpness")


@dataclass(frozen=True)
class PhotoReport:
    faces: tuple[FaceBox, ...] | None  # None: face check unavailable; faces[0] is the subject
    sharpness: float  # variance of the Laplacian on the normalised grayscale (0..255 luma)
    exposure: float  # mean luma 0..1
    clipped_dark: float  # fraction of pixels crushed to black
    clipped_bright: float  # fraction of pixels blown to white
    problems: tuple[str, ...]  # blocking codes (PROBLEM_CODES); empty = fine
    warnings: tuple[str, ...]  # informative codes (WARNING_CODES)
    # dlib's 128-d identity descriptor of the subject's face: a person's photo that passed the
    # checks, when an embedder was given (``inspect_photos``); None otherwise.
    embedding: tuple[float, ...] | None = None

    @property
    def primary_face(self) -> FaceBox | None:
        """The subject's face (the one to crop around), if any was found."""
        return self.faces[0] if self.faces else None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for logs, job rows, the CLI)."""
        return {
            "faces": None
            if self.faces is None
            else [[f.left, f.top, f.right, f.bottom, round(f.score, 3)] for f in self.faces],
            "sharpness": round(self.sharpness, 2),
            "exposure": round(self.exposure, 4),
            "clipped_dark": round(self.clipped_dark, 4),
            "clipped_bright": round(self.clipped_bright, 4),
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def select_faces(
    candidates: Sequence[FaceBox], thresholds: SubjectThresholds = SubjectThresholds()
) -> tuple[FaceBox, ...]:
    """(primary, confident others largest first) from raw detections; see the module doc."""
    pool = [f for f in candidates if f.score >= thresholds.min_face_score]
    primary = primary_face(pool, thresholds.prominent_face_ratio)
    if primary is None:
        return ()
    others = [f for f in pool if f is not primary and f.score >= thresholds.min_other_face_score]
    others.sort(key=lambda f: (f.area, f.score), reverse=True)
    return (primary, *others)


def _kind_name(kind: object) -> str:
    # Accepts plain strings and enums (ConceptKind) alike.
    name = kind.value if isinstance(kind, Enum) else kind
    if not isinstance(name, str) or name not in KNOWN_KINDS:
        raise ValueError(f"unknown subject kind {kind!r}; expected one of {sorted(KNOWN_KINDS)}")
    return name


def _face_findings(
    faces: tuple[FaceBox, ...], size: tuple[int, int], thresholds: SubjectThresholds
) -> tuple[list[str], list[str]]:
    if not faces:
        return [NO_FACE], []
    problems: list[str] = []
    warnings: list[str] = []
    primary, others = faces[0], faces[1:]
    rivals = [f for f in others if f.side >= thresholds.prominent_face_ratio * primary.side]
    if rivals:
        problems.append(SEVERAL_FACES)
    if len(others) > len(rivals):
        warnings.append(BACKGROUND_FACES)
    if primary.side < thresholds.min_face_fraction * min(size):
        problems.append(FACE_TOO_SMALL)
    return problems, warnings


def inspect_photo(
    image: Image.Image,
    kind: str,
    *,
    detector: FaceDetector | None,
    thresholds: SubjectThresholds = SubjectThresholds(),
) -> PhotoReport:
    """Check one photo of a subject of `kind` ("person", "pet", "object").

    Faces are detected for every kind when a detector is given (cheap, and informative), but
    only a person's photo gets face problems. With no detector, `faces` is None and a person's
    photo gets the warning `face_check_unavailable` (logged once per process), not a problem.
    """
    kind_name = _kind_name(kind)
    stats = measure(image)
    problems: list[str] = []
    warnings: list[str] = []

    faces: tuple[FaceBox, ...] | None = None
    if detector is not None:
        candidates = detector.detect(image, min_score=thresholds.min_face_score)
        faces = select_faces(candidates, thresholds)
        if kind_name == PERSON:
            face_problems, face_warnings = _face_findings(faces, image.size, thresholds)
            problems += face_problems
            warnings += face_warnings
    elif kind_name == PERSON:
        warnings.append(FACE_CHECK_UNAVAILABLE)
        log_once(
            "inspect-no-detector",
            "no face detector: person photos are accepted without the face check "
            "(install the `faces` extra: pip install 'avatarbot[faces]')",
        )

    if stats.sharpness < thresholds.min_sharpness:
        problems.append(TOO_BLURRY)
    elif stats.sharpness < thresholds.soft_sharpness:
        warnings.append(SOFT)
    if stats.exposure < thresholds.min_exposure:
        problems.append(TOO_DARK)
    elif stats.exposure < thresholds.dark_exposure:
        warnings.append(DARK)
    if stats.exposure > thresholds.max_exposure:
        problems.append(TOO_BRIGHT)
    elif stats.exposure > thresholds.bright_exposure:
        warnings.append(BRIGHT)
    if stats.contrast < thresholds.min_contrast:
        warnings.append(LOW_CONTRAST)
    if stats.clipped_dark > thresholds.max_clipped and TOO_DARK not in problems:
        warnings.append(SHADOWS_CLIPPED)
    if stats.clipped_bright > thresholds.max_clipped and TOO_BRIGHT not in problems:
        warnings.append(HIGHLIGHTS_CLIPPED)

    report = PhotoReport(
        faces=faces,
        sharpness=stats.sharpness,
        exposure=stats.exposure,
        clipped_dark=stats.clipped_dark,
        clipped_bright=stats.clipped_bright,
        problems=tuple(problems),
        warnings=tuple(warnings),
    )
    logger.debug("inspected %dx%d %s photo: %s", *image.size, kind_name, report.to_dict())
    return report


def inspect_photos(
    images: Sequence[Image.Image],
    kind: str,
    *,
    detector: FaceDetector | None,
    thresholds: SubjectThresholds = SubjectThresholds(),
    embedder: FaceEmbedder | None = None,
) -> list[PhotoReport]:
    """`inspect_photo` for each photo, in order (CPU-bound: call it from a worker thread).

    With an `embedder`, a person's photo that passed every check gets the identity embedding
    of its subject's face (`PhotoReport.embedding`), for the one-person-per-avatar check; the
    embeddings of all the photos are computed as one batch.
    """
    reports = [
        inspect_photo(image, kind, detector=detector, thresholds=thresholds) for image in images
    ]
    if embedder is None or _kind_name(kind) != PERSON:
        return reports
    chosen = [
        (index, face)
        for index, report in enumerate(reports)
        if report.ok and (face := report.primary_face) is not None
    ]
    vectors = embedder.embed_many([(images[index], face) for index, face in chosen])
    for (index, _), vector in zip(chosen, vectors, strict=True):
        reports[index] = replace(reports[index], embedding=tuple(float(v) for v in vector))
    return reports
