"""A job's ``settings`` column, typed: one codec per job kind, the only code that reads it.

A render's settings are one ``RenderSettings`` (bot/services/results.py): the renders service
validates them once, this module stores them as JSON and reads them back as that type for the
worker that claims the job, the views and reroll. The negative prompt and the seed have
columns of their own (the negative prompt sealed at rest), so the JSON leaves them out; it
adds the avatars' names as they were called then (shown after a rename or deletion).

An avatar creation's settings are ``EncodeSettings``: the personalizer, the uploaded file
names and the photos intake refused before the job was queued.

Reading validates (pydantic): a value of the wrong type raises ``CorruptJobSettings``, never
a half-read job; rows written before a field existed read with that field's old default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from bot.services.results import PhotoRefusal, RenderSettings
from kinds import DEFAULT_PERSONALIZER

# What the JSON column holds (what SQLAlchemy's JSON type gives back).
JsonObject = Mapping[str, object]

# Rows written before a field existed: the values every render had then.
_RENDER_DEFAULTS: dict[str, object] = {
    "style": "none",
    "aspect": "square",
    "width": 512,
    "height": 512,
    "steps": 25,
    "guidance": 6.0,
    "count": 1,
    "identity_strength": 0.7,
    "personalizer": DEFAULT_PERSONALIZER,
    "age_restricted": False,
    "best_of": 1,
}
# Kept beside the settings: the first avatar's name, and the second's for a two-subject
# render. The second name stays when that avatar is deleted (``with_avatar_id`` becomes
# NULL), so such a job is never taken for a one-subject render.
_AVATAR_NAME = "avatar_name"
_WITH_AVATAR_NAME = "with_avatar_name"
# The columns of their own (see the module docstring).
_OWN_COLUMNS = ("negative_prompt", "seed")


class CorruptJobSettings(ValueError):
    """A job's settings column does not hold what its kind stores."""


@dataclass(frozen=True)
class StoredRender:
    """A render job's settings as stored: the settings and the avatars' names then."""

    settings: RenderSettings
    avatar_name: str = ""
    with_avatar_name: str | None = None

    @property
    def two_subjects(self) -> bool:
        return self.with_avatar_name is not None


@dataclass(frozen=True)
class EncodeSettings:
    """An avatar creation job's settings."""

    personalizer: str
    avatar_name: str = ""
    # The file name each stored photo was uploaded as, in stored order (for messages).
    photo_names: tuple[str, ...] = ()
    # The photos intake refused before the job was queued (told with the job's result).
    intake_refused: tuple[PhotoRefusal, ...] = ()

    def photo_name(self, position: int) -> str:
        """The uploaded name of the photo stored at ``position`` (1-based)."""
        if 1 <= position <= len(self.photo_names):
            return self.photo_names[position - 1]
        return f"photo {position}"


_RENDER = TypeAdapter(RenderSettings)
_ENCODE = TypeAdapter(EncodeSettings)
_NAME = TypeAdapter(str | None)


def render_column(stored: StoredRender) -> dict[str, object]:
    """The ``settings`` column of a render job."""
    out: dict[str, object] = _RENDER.dump_python(stored.settings, mode="json")
    for name in _OWN_COLUMNS:
        del out[name]
    out[_AVATAR_NAME] = stored.avatar_name
    if stored.with_avatar_name is not None:
        out[_WITH_AVATAR_NAME] = stored.with_avatar_name
    return out


def read_render(column: JsonObject | None, negative_prompt: str, seed: int) -> StoredRender:
    """A render job's settings from its column and its own columns."""
    raw = dict(column or {})
    try:
        settings = _RENDER.validate_python(
            {**_RENDER_DEFAULTS, **raw, "negative_prompt": negative_prompt, "seed": seed}
        )
        return StoredRender(
            settings,
            avatar_name=_NAME.validate_python(raw.get(_AVATAR_NAME)) or "",
            with_avatar_name=_NAME.validate_python(raw.get(_WITH_AVATAR_NAME)),
        )
    except ValidationError as exc:
        raise CorruptJobSettings(f"unreadable render settings: {exc}") from exc


def two_subjects(column: JsonObject | None) -> bool:
    """Whether a render job's column says it renders two avatars (without opening its
    sealed negative prompt)."""
    return (column or {}).get(_WITH_AVATAR_NAME) is not None


def encode_column(settings: EncodeSettings) -> dict[str, object]:
    """The ``settings`` column of an avatar creation job."""
    out: dict[str, object] = _ENCODE.dump_python(settings, mode="json")
    return out


def read_encode(column: JsonObject | None) -> EncodeSettings:
    """An avatar creation job's settings from its column."""
    try:
        return _ENCODE.validate_python(dict(column or {}))
    except ValidationError as exc:
        raise CorruptJobSettings(f"unreadable avatar creation settings: {exc}") from exc
