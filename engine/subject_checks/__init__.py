"""Subject checks: is this photo usable for an avatar? Faces (dlib, offline), sharpness, exposure.

`inspect_photo(s)` returns a `PhotoReport` per photo with blocking `problems` (the service turns
them into refusals) and informative `warnings`. Face checks need the `faces` extra (dlib-bin +
face-recognition-models); without it `FaceDetector.load()` returns None and person photos get
the warning `face_check_unavailable`. `FaceEmbedder` gives dlib's 128-d identity descriptor for
identity-similarity evaluations, computed by dlib's network in torch (`face_net.py`); torch is
imported only when an embedder loads, so the detector and the checks import without it.
"""

from engine.subject_checks.faces import (
    SAME_PERSON_MAX_DISTANCE,
    FaceBox,
    FaceDetector,
    FaceEmbedder,
    face_distance,
)
from engine.subject_checks.inspect import (
    BACKGROUND_FACES,
    FACE_CHECK_UNAVAILABLE,
    FACE_TOO_SMALL,
    LOW_CONTRAST,
    NO_FACE,
    SEVERAL_FACES,
    TOO_BLURRY,
    TOO_BRIGHT,
    TOO_DARK,
    PhotoReport,
    SubjectThresholds,
    inspect_photo,
    inspect_photos,
    select_faces,
)

__all__ = [
    "BACKGROUND_FACES",
    "FACE_CHECK_UNAVAILABLE",
    "FACE_TOO_SMALL",
    "LOW_CONTRAST",
    "NO_FACE",
    "SAME_PERSON_MAX_DISTANCE",
    "SEVERAL_FACES",
    "TOO_BLURRY",
    "TOO_BRIGHT",
    "TOO_DARK",
    "FaceBox",
    "FaceDetector",
    "FaceEmbedder",
    "PhotoReport",
    "SubjectThresholds",
    "face_distance",
    "inspect_photo",
    "inspect_photos",
    "select_faces",
]
