"""User-facing wording of the engine's subject-check codes (engine/subject_checks/inspect.py).

The engine reports stable codes; what a member reads is decided here, in one place.
"""

from __future__ import annotations

_PROBLEMS = {
    "no_face": "`{name}`: no face found. Use a photo where the face is clearly visible.",
    "several_faces": "`{name}`: several people in it. Use photos of this person alone.",
    "face_too_small": "`{name}`: the face is too small. Use a closer photo.",
    "too_blurry": "`{name}`: too blurry. Use a sharper photo.",
    "too_dark": "`{name}`: too dark. Use a better-lit photo.",
    "too_bright": "`{name}`: overexposed. Use a photo with less glare.",
}

_WARNINGS = {
    "face_check_unavailable": "`{name}`: faces could not be checked on this server.",
    "background_faces": "`{name}`: other faces in the background may blend into results.",
    "soft": "`{name}`: a little soft; sharper photos give better results.",
    "dark": "`{name}`: rather dark.",
    "bright": "`{name}`: rather bright.",
    "low_contrast": "`{name}`: low contrast.",
    "shadows_clipped": "`{name}`: large areas are pure black.",
    "highlights_clipped": "`{name}`: large areas are pure white.",
}


def problem_message(code: str, name: str, kind: str) -> str:
    template = _PROBLEMS.get(code, "`{name}` cannot be used for this {kind} ({code}).")
    return template.format(name=name, kind=kind, code=code)


def warning_message(code: str, name: str) -> str:
    return _WARNINGS.get(code, "`{name}`: {code}.").format(name=name, code=code)
