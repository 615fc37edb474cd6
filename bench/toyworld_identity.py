"""Render-level identity in the toy world (issue 27): own-vs-other margins with intervals.

For held-out subject A, place p and seed s, ``own`` is the similarity of A's render R_A(p, s)
to A's reference photos, and ``other`` the mean over the other held-out subjects B of the
similarity of *their* render at the same place and seed, R_B(p, s), to A's references. The
margin own − other is what the renders carry of A beyond what any render at that place and
seed gets for free: a method that ignores the subject draws the same thing for everyone and
has a margin of exactly 0. Every component (colour, pattern, shape: ``identity_components``)
gets its own margin, so a method that transfers colours alone shows it.

Per subject: the mean over places and seeds; per arm: the mean over subjects with a 95 %
subject-bootstrap interval (``bootstrap_interval``). A render in which the segmenter finds no
subject scores 0 on every component (it has no identity); ``found_rate`` says how often that
happened.

Reference lines (``fakes``): renders drawn by the world itself at the same places and seeds,
carrying one part of each subject's identity and a fixed value for the rest: its colours
only, its shape only, its pattern only, and the subject itself (the ceiling). Their margins
show what each component responds to.

numpy and PIL only: the evaluation, the baselines and the tests call it on images they hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from avatarbot_research.toyworld import PLACES, Scene, Subject, render_scene, subject
from avatarbot_research.toyworld.metrics import (
    ZERO,
    Components,
    ToyFeatures,
    feature_components,
    identity_features,
    mean_components,
)
from PIL.Image import Image

BOOTSTRAP = 2000  # resamples of the subject-bootstrap
COMPONENTS = ("colour", "pattern", "shape", "overall")


class Rendered(Protocol):
    """One render of a held-out subject (``bench.toyworld_eval.Render`` fits)."""

    @property
    def subject(self) -> int: ...
    @property
    def place(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def image(self) -> Image | None: ...


@dataclass(frozen=True)
class Shot:
    """A render given by its key: what ``shots`` makes of ``BaselineResult.images``."""

    subject: int
    place: str
    seed: int
    image: Image = field(repr=False)


def shots(images: Mapping[tuple[int, str, int], Image]) -> list[Shot]:
    """``BaselineResult.images`` ((subject, place, seed) → image) as renders."""
    return [Shot(sid, place, seed, image) for (sid, place, seed), image in images.items()]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def bootstrap_interval(values: Sequence[float] | np.ndarray, seed: int) -> Interval:
    """The mean of per-subject values with a 95 % interval from resampling the subjects
    (``BOOTSTRAP`` resamples, percentile method; deterministic given ``seed``)."""
    data = np.asarray(values, np.float64)
    if data.ndim != 1 or not len(data):
        raise ValueError("bootstrap_interval needs a non-empty list of per-subject values")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(BOOTSTRAP, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(data.mean()), float(low), float(high))


@dataclass(frozen=True)
class SubjectMargin:
    """One subject's mean own and other similarities over its places and seeds."""

    subject: int
    own: Components
    other: Components
    renders: int  # (place, seed) pairs scored
    found: int  # of them, renders of this subject in which a subject was found

    def margin(self, component: str) -> float:
        return float(getattr(self.own, component) - getattr(self.other, component))


@dataclass(frozen=True)
class Margins:
    """An arm's render-level identity: per component (``COMPONENTS``) the own-vs-other margin,
    own and other, each a mean over subjects with its 95 % subject-bootstrap interval."""

    arm: str
    margin: dict[str, Interval]
    own: dict[str, Interval]
    other: dict[str, Interval]
    found_rate: float  # of the arm's renders of these subjects, those with a subject found
    subjects: list[SubjectMargin]
    groups: dict[str, dict[str, Interval]]  # unseen group → component → margin

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _score(found: ToyFeatures | None, refs: Sequence[ToyFeatures]) -> Components:
    """Mean components against the references; a render without a subject has none: 0."""
    if found is None:
        return ZERO
    return mean_components([feature_components(found, r) for r in refs])


def reference_features(references: Mapping[int, Sequence[Image]]) -> dict[int, list[ToyFeatures]]:
    """Each subject's reference photos' features; a subject must be found in at least one."""
    out = {}
    for sid, photos in references.items():
        found = [f for f in map(identity_features, photos) if f is not None]
        if not found:
            raise ValueError(f"no subject found in any reference photo of subject {sid}")
        out[sid] = found
    return out


def _mean_of_others(parts: list[Components]) -> Components:
    """The component-wise mean, computed as the first plus the mean offset from it, so that
    equal scores average to exactly that score: a render that ignores the subject then has
    own == other bit for bit, and a margin of exactly 0 rather than a rounding error."""
    rows = np.array([_values(p) for p in parts])
    return Components(*(rows[0] + (rows - rows[0]).mean(axis=0)).tolist())


def _intervals(per_subject: list[Components], seed: int) -> dict[str, Interval]:
    return {c: bootstrap_interval([getattr(p, c) for p in per_subject], seed) for c in COMPONENTS}


def _difference(a: Components, b: Components) -> Components:
    return Components(*(float(x - y) for x, y in zip(_values(a), _values(b), strict=True)))


def _values(c: Components) -> tuple[float, ...]:
    return tuple(getattr(c, name) for name in COMPONENTS)


def margins(
    arm: str,
    renders: Sequence[Rendered],
    references: Mapping[int, Sequence[Image]],
    *,
    seed: int = 0,
    groups: Mapping[int, str] | None = None,
) -> Margins:
    """The arm's own-vs-other margins (module docstring) over the subjects of ``references``.

    ``renders``: the arm's renders, at least two of these subjects at each (place, seed) used;
    renders of other subjects are ignored. A (place, seed) is scored for subject A when A and
    at least one other subject were rendered there. ``groups``: subject → unseen group
    (split.json "groups"), for per-group margins.
    """
    refs = reference_features(references)
    if len(refs) < 2:
        raise ValueError("margins need at least two subjects: 'other' is another subject")
    cells: dict[tuple[str, int], dict[int, ToyFeatures | None]] = {}
    for r in renders:
        if r.subject not in refs:
            continue
        if r.image is None:
            raise ValueError(f"render of subject {r.subject} at {r.place}, {r.seed} has no image")
        cells.setdefault((r.place, r.seed), {})[r.subject] = identity_features(r.image)
    per_subject = []
    for sid, mine in refs.items():
        own, other, found = [], [], 0
        for cell in cells.values():
            if sid not in cell or len(cell) < 2:
                continue
            own.append(_score(cell[sid], mine))
            other.append(_mean_of_others([_score(f, mine) for b, f in cell.items() if b != sid]))
            found += cell[sid] is not None
        if not own:
            raise ValueError(f"subject {sid}: no place and seed rendered for another subject too")
        per_subject.append(
            SubjectMargin(sid, mean_components(own), mean_components(other), len(own), found)
        )
    diffs = [_difference(s.own, s.other) for s in per_subject]
    by_group: dict[str, list[Components]] = {}
    for s, d in zip(per_subject, diffs, strict=True):
        if groups is not None and s.subject in groups:
            by_group.setdefault(groups[s.subject], []).append(d)
    return Margins(
        arm=arm,
        margin=_intervals(diffs, seed),
        own=_intervals([s.own for s in per_subject], seed),
        other=_intervals([s.other for s in per_subject], seed),
        found_rate=sum(s.found for s in per_subject) / sum(s.renders for s in per_subject),
        subjects=per_subject,
        groups={g: _intervals(d, seed) for g, d in sorted(by_group.items())},
    )


# -- reference lines: the world's own renders with one part of the identity kept ------------

COLOUR_ONLY, SHAPE_ONLY, PATTERN_ONLY, ITSELF = (
    "colour only",
    "shape only",
    "pattern only",
    "the subject itself",
)
FAKES = (COLOUR_ONLY, SHAPE_ONLY, PATTERN_ONLY, ITSELF)
# What a fake keeps fixed for every subject: a shape, a colour pair and a pattern.
FIXED_SHAPE, FIXED_BODY, FIXED_ACCENT, FIXED_PATTERN = "square", "magenta", "yellow", "spot"


def fake_subject(kind: str, subj: Subject) -> Subject:
    """The subject with everything but the part ``kind`` keeps replaced by the fixed values."""
    if kind == COLOUR_ONLY:
        return Subject(subj.id, FIXED_SHAPE, subj.body, subj.accent, FIXED_PATTERN)
    if kind == SHAPE_ONLY:
        return Subject(subj.id, subj.shape, FIXED_BODY, FIXED_ACCENT, FIXED_PATTERN)
    if kind == PATTERN_ONLY:
        return Subject(subj.id, FIXED_SHAPE, FIXED_BODY, FIXED_ACCENT, subj.pattern)
    if kind == ITSELF:
        return subj
    raise ValueError(f"unknown fake {kind!r} (known: {', '.join(FAKES)})")


def fake_renders(
    kind: str,
    subject_ids: Sequence[int],
    seeds: Sequence[int],
    *,
    places: Sequence[str] = tuple(PLACES),
    size: int = 64,
    seed: int = 0,
) -> list[Shot]:
    """The fake ``kind`` of each subject drawn by the world at every place and seed. At one
    place and seed every subject gets the same scene (background, position, size, rotation,
    lighting), so whatever a fake keeps fixed is the same for all subjects there."""
    out = []
    for p, place in enumerate(places):
        for s in seeds:
            for sid in subject_ids:
                rng = np.random.default_rng([seed, p, s])
                image, _mask = render_scene(
                    fake_subject(kind, subject(sid)), Scene(place), size, rng
                )
                out.append(Shot(sid, place, s, image))
    return out


def fake_margins(
    references: Mapping[int, Sequence[Image]],
    seeds: Sequence[int],
    *,
    places: Sequence[str] = tuple(PLACES),
    size: int = 64,
    seed: int = 0,
    groups: Mapping[int, str] | None = None,
) -> list[Margins]:
    """Every fake's margins (``FAKES`` order) for the subjects of ``references``."""
    ids = list(references)
    return [
        margins(
            kind,
            fake_renders(kind, ids, seeds, places=places, size=size, seed=seed),
            references,
            seed=seed,
            groups=groups,
        )
        for kind in FAKES
    ]


def _cell(i: Interval) -> str:
    return f"{i.mean:+.3f} [{i.low:+.3f}, {i.high:+.3f}]"


def markdown_rows(rows: Sequence[Margins]) -> list[str]:
    """A table of margins (one row per arm): each component's margin [95 % interval], the
    overall own and other, and how often a subject was found."""
    lines = [
        "| arm | colour margin | pattern margin | shape margin | overall margin | own | other "
        "| subject found |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        parts = " | ".join(_cell(m.margin[c]) for c in COMPONENTS)
        lines.append(
            f"| {m.arm} | {parts} | {m.own['overall'].mean:.3f} | {m.other['overall'].mean:.3f} "
            f"| {100 * m.found_rate:.0f} % |"
        )
    return lines
