"""The shared kinds: the names every layer agrees on, defined once.

A job's status and kind, an avatar's status, the kind of subject it shows, the personalizer
names and the default one. ``db`` stores these values, the services and the Discord code
compare against them, the engine acts on the subject kind and the personalizer names. This
package sits below all of them: it imports only the standard library (no SQLAlchemy, no torch,
no discord), so ``bot.ui`` can name a job status without importing ``db`` and ``db`` can store
a subject kind without importing ``engine`` (tests/test_layering.py holds both).

The values are the strings stored in the database: renaming one needs a migration.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal, get_args


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES: Final = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})


class JobKind(StrEnum):
    RENDER = "render"  # render images of an avatar
    ENCODE = "encode"  # check a new avatar's photos and encode them (avatar creation)


class AvatarStatus(StrEnum):
    PENDING = "pending"  # photos stored, the encode job has not finished yet
    READY = "ready"


class SubjectKind(StrEnum):
    """What an avatar shows. The engine checks photos by it (a person needs one face) and the
    safety rules depend on it (a person's avatar is never rendered unclothed)."""

    PERSON = "person"
    PET = "pet"
    OBJECT = "object"


SUBJECT_KINDS: Final[tuple[SubjectKind, ...]] = tuple(SubjectKind)

# The personalizers a render may ask for and an operator may make the default (each loads on
# first use: engine/personalizers). A profile may also carry "none", the base model alone, which
# no avatar uses. The engine's settings refuse any other default when they load.
PersonalizerName = Literal["ip-adapter", "instantbooth", "flux2-klein"]
PERSONALIZERS: Final[tuple[PersonalizerName, ...]] = get_args(PersonalizerName)
DEFAULT_PERSONALIZER: Final[PersonalizerName] = "ip-adapter"


class LikenessKind(StrEnum):
    """How a rendered image's likeness to its avatar was measured (engine/likeness.py)."""

    FACE = "face"  # a person's face, compared with the avatar's enrolled faces
    NO_FACE = "no_face"  # a person's render in which no face was found
    IMAGE = "image"  # a pet's or object's render, compared with its photos' image embeddings


@dataclass(frozen=True)
class LikenessScore:
    """One rendered image's likeness: ``value`` in 0..1, None for ``NO_FACE``. Measured by the
    engine, stored with the output, shown under the image, ranked by best of k."""

    kind: LikenessKind
    value: float | None

    @property
    def rank(self) -> float:
        """Best of k's order: higher is better; a render that lost the face ranks below any
        score."""
        return -1.0 if self.value is None else self.value


class UnknownPersonalizer(LookupError):
    """No personalizer by this name where it was asked for (the engine's profile, or the
    facts the render workers published)."""

    def __init__(self, name: str, known: tuple[str, ...] | list[str]) -> None:
        super().__init__(
            f"personalizer {name!r} is not available; available: " + (", ".join(known) or "none")
        )
        self.name = name
        self.known = tuple(known)


__all__ = [
    "DEFAULT_PERSONALIZER",
    "FINAL_STATUSES",
    "PERSONALIZERS",
    "SUBJECT_KINDS",
    "AvatarStatus",
    "JobKind",
    "JobStatus",
    "LikenessKind",
    "LikenessScore",
    "PersonalizerName",
    "SubjectKind",
    "UnknownPersonalizer",
]
