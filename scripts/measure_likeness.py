#!/usr/bin/env python3
"""Measure the likeness scorer (engine/likeness.py) on the real face photos the tests ship:
how well its figure tells the same person from strangers (issue 28).

An avatar is enrolled the way creation enrols one: 3 photos of a person, each photo's face
described once, ``face_reference`` of the descriptors. Then ``score_faces`` (the worker's path:
detection, ``select_faces``, one descriptor, distance to the enrolled mean, the figure) scores

- *same*: the person's other photos (held out of that enrolment);
- *different*: the other person's photos, and scikit-image's ``lfw_subset`` faces (100 LFW
  faces of 25 px, upscaled to 150 px: low-resolution strangers; a few are not detected and
  score "no face", which counts as "not the same person").

People: Eileen Collins (scikit-image's astronaut: its 10 variants from
scripts/measure_face_distances.py, plus the demo samples bot/assets/samples/person-1.jpg and
person-2.jpg, re-framed and re-lit copies of it) and Grace Hopper
(tests/fixtures/faces/grace_hopper.jpg and its 10 variants). Each person is enrolled
``--enrolments`` times from seeded random triples of their variants. Every "same" photo is an
edit of one original photo, so "same" is easier here than two different photos of a person
would be (scripts/measure_face_distances.py: 0.04-0.29 apart, where real second photos reach
the 0.4s); the report says so.

Run: ``python scripts/measure_likeness.py`` (needs the ``faces`` and ``test`` extras); writes
``bench/results/likeness-faces-cpu.{json,md}`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine_basics, package_version  # noqa: E402
from engine.likeness import (  # noqa: E402
    FACE_FULL,
    FACE_ZERO,
    LikenessReference,
    face_reference,
    score_faces,
)
from engine.subject_checks import FaceDetector, FaceEmbedder, select_faces  # noqa: E402
from scripts.measure_face_distances import variants  # noqa: E402

STEM = "likeness-faces-cpu"
ENROLLED = 3  # photos per enrolment, as a member's first few uploads
LFW_SIDE = 150  # lfw_subset's 25 px faces upscaled to this, as measure_face_distances does


@dataclass(frozen=True)
class Photo:
    person: str  # "astronaut", "hopper" or "lfw-<i>" (strangers, each their own person)
    name: str
    image: Image.Image
    variant: bool = False  # one of measure_face_distances' variants: may be enrolled


@dataclass(frozen=True)
class Score:
    enrolment: str
    photo: str
    relation: str  # "same", "other person" (the other shipped photo), "lfw stranger"
    likeness: float | None  # None: no face found


def photos() -> list[Photo]:
    astronaut = Image.fromarray(data.astronaut()).convert("RGB")
    hopper = Image.open(ROOT / "tests/fixtures/faces/grace_hopper.jpg").convert("RGB")
    out = [Photo("astronaut", n, i, True) for n, i in variants(astronaut).items()]
    for sample in ("person-1.jpg", "person-2.jpg"):
        image = Image.open(ROOT / "bot/assets/samples" / sample).convert("RGB")
        out.append(Photo("astronaut", sample, image))
    out += [Photo("hopper", n, i, True) for n, i in variants(hopper).items()]
    for i, pixels in enumerate(data.lfw_subset()[:100]):  # the first 100 are faces
        image = Image.fromarray((pixels * 255).astype(np.uint8)).convert("RGB")
        image = image.resize((LFW_SIDE, LFW_SIDE), Image.Resampling.BICUBIC)
        out.append(Photo(f"lfw-{i}", f"lfw {i}", image))
    return out


def enrol(
    person: str, pool: list[Photo], count: int, seed: int, detector: FaceDetector,
    embedder: FaceEmbedder,
) -> list[tuple[str, set[str], LikenessReference]]:  # fmt: skip
    """``count`` enrolments of ``person`` from random triples of their variants: (label, the
    photos' names, the reference)."""
    rng = random.Random(f"{seed}:{person}")
    variant_names = sorted(p.name for p in pool if p.person == person and p.variant)
    by_name = {p.name: p for p in pool if p.person == person}
    out = []
    for k in range(count):
        names = sorted(rng.sample(variant_names, ENROLLED))
        descriptors = []
        for name in names:
            image = by_name[name].image
            faces = select_faces(detector.detect(image))
            descriptors.append(embedder.embed(image, faces[0]).tolist())
        reference = face_reference(descriptors)
        assert reference is not None
        out.append((f"{person} #{k + 1} ({', '.join(names)})", set(names), reference))
    return out


def relation(enrolled: str, photo: Photo) -> str:
    if photo.person == enrolled:
        return "same"
    return "lfw stranger" if photo.person.startswith("lfw") else "other person"


def measure(enrolments: int, seed: int) -> list[Score]:
    detector, embedder = FaceDetector.load(), FaceEmbedder.load()
    if detector is None or embedder is None:
        raise SystemExit("needs dlib and face-recognition-models (the `faces` extra)")
    pool = photos()
    enrolled = {
        person: enrol(person, pool, enrolments, seed, detector, embedder)
        for person in ("astronaut", "hopper")
    }
    scores = []
    # Photo by photo, every enrolment in turn: the detector remembers the photo's detection
    # (its cache of recent photos), so each photo is detected once and described per score.
    for photo in pool:
        for person, references in enrolled.items():
            for label, names, reference in references:
                if photo.person == person and photo.name in names:
                    continue  # enrolled: not held out
                (score,) = score_faces([photo.image], reference, detector, embedder)
                scores.append(Score(label, photo.name, relation(person, photo), score.value))
    return scores


def distribution(values: list[float | None]) -> dict[str, Any]:
    found = np.array([v for v in values if v is not None])
    out: dict[str, Any] = {"n": len(values), "no_face": len(values) - len(found)}
    if len(found):
        q = np.percentile(found, [0, 25, 50, 75, 100])
        out |= dict(zip(("min", "q1", "median", "q3", "max"), map(float, q), strict=True))
        out["mean"] = float(found.mean())
        out["at_least_50"] = float(np.mean([v is not None and v >= 0.5 for v in values]))
    return out


def error_rates(same: list[float], different: list[float], threshold: float) -> dict[str, float]:
    """Accepting a figure >= ``threshold`` as the same person ("no face": -1, never accepted)."""
    return {
        "threshold": threshold,
        "false_reject": float(np.mean(np.array(same) < threshold)),
        "false_accept": float(np.mean(np.array(different) >= threshold)),
    }


def best_threshold(same: list[float], different: list[float]) -> dict[str, Any]:
    """The threshold with the lowest balanced error (mean of both rates), and the interval of
    thresholds that reach it: a gap between both distributions when they separate."""
    cuts = sorted({*same, *different, 1.01})
    rated = [error_rates(same, different, t) for t in cuts]
    errors = [(r["false_reject"] + r["false_accept"]) / 2 for r in rated]
    best = min(errors)
    tied = [r for r, e in zip(rated, errors, strict=True) if e == best]
    low = max((v for v in different if v < tied[0]["threshold"]), default=0.0)
    high = tied[-1]["threshold"]
    middle = (low + high) / 2  # the cut in the middle of the gap
    return {
        "balanced_error": best,
        "accepts_from": tied[0]["threshold"],
        "above": low,
        "up_to": high,
        "middle": middle,
        "middle_distance": FACE_ZERO - middle * (FACE_ZERO - FACE_FULL),
        **{k: v for k, v in error_rates(same, different, middle).items() if k != "threshold"},
    }


def summarise(scores: list[Score], enrolments: int, seed: int) -> dict[str, Any]:
    def ranked(which: set[str]) -> list[float]:
        return [-1.0 if s.likeness is None else s.likeness for s in scores if s.relation in which]

    same, different = ranked({"same"}), ranked({"other person", "lfw stranger"})
    relations = ("same", "other person", "lfw stranger")
    best = best_threshold(same, different)
    return {
        "benchmark": "likeness-faces",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**machine_basics(), "dlib": package_version("dlib-bin")},
        "mapping": {
            "FACE_FULL": FACE_FULL,
            "FACE_ZERO": FACE_ZERO,
            "fifty_at": (FACE_FULL + FACE_ZERO) / 2,
        },
        "enrolments_per_person": enrolments,
        "photos_per_enrolment": ENROLLED,
        "seed": seed,
        "distributions": {
            **{r: distribution([s.likeness for s in scores if s.relation == r]) for r in relations},
            "different (all)": distribution([s.likeness for s in scores if s.relation != "same"]),
        },
        "at_50": error_rates(same, different, 0.5),
        "best": best,
        "scores": [s.__dict__ for s in scores],
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def markdown(doc: dict[str, Any]) -> str:
    m, best, at50 = doc["mapping"], doc["best"], doc["at_50"]
    lines = [
        "# Likeness on real face photos: same person vs strangers (cpu)",
        "",
        "Generated by `scripts/measure_likeness.py` (issue 28). Each person is enrolled "
        f"{doc['enrolments_per_person']} times from {doc['photos_per_enrolment']} of their "
        "photo variants (`face_reference`); every other photo is scored against each enrolment "
        "with `score_faces` (detection, `select_faces`, descriptor, distance to the enrolled "
        f"mean; FACE_FULL {m['FACE_FULL']}, FACE_ZERO {m['FACE_ZERO']}: 50 % at distance "
        f"{m['fifty_at']:.2f}). Measured {doc['measured_at']} on {doc['machine']['cpu_model']}, "
        f"dlib-bin {doc['machine']['dlib']}.",
        "",
        "## The likeness figure",
        "",
        "| photos scored | n | no face | min | q1 | median | q3 | max | ≥ 50 % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in doc["distributions"].items():
        cells = [_pct(d[k]) if k in d else "–" for k in ("min", "q1", "median", "q3", "max")]
        share = _pct(d["at_least_50"]) if "at_least_50" in d else "–"
        lines.append(f"| {name} | {d['n']} | {d['no_face']} | {' | '.join(cells)} | {share} |")
    lines += [
        "",
        "## The threshold it implies",
        "",
        f"- At 50 % (creation's same-person rule): false rejects {_pct(at50['false_reject'])}, "
        f"false accepts {_pct(at50['false_accept'])}.",
        f"- Best cut (lowest mean of both error rates, {_pct(best['balanced_error'])}): any "
        f"figure above {_pct(best['above'])} and up to {_pct(best['up_to'])}; its middle, "
        f"{_pct(best['middle'])} (distance {best['middle_distance']:.3f}), gives false rejects "
        f"{_pct(best['false_reject'])}, false accepts {_pct(best['false_accept'])}.",
        '- "Same" photos are edits of one photo per person (mirrored, cropped, re-lit, '
        "rotated, greyscale, smaller), not second photos: real second photos of a person sit "
        "further from the enrolment, so the same-person figures here are an upper bound. The "
        "LFW strangers are 25 px faces upscaled: their descriptors are blurrier than a "
        'render\'s. "No face" counts as not the same person.',
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--enrolments", type=int, default=8, help="per person")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    doc = summarise(measure(args.enrolments, args.seed), args.enrolments, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{STEM}.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    (args.out / f"{STEM}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
