"""Likeness on the worker: where an avatar's enrolled identity is kept, and best of k.

The engine measures (engine/likeness.py); this module decides what is kept and posted.

- An avatar's enrolled identity (its kept photos' face descriptors for a person, their image
  embeddings for a pet or object) is one more row of the avatar's cached features, under
  ``stored_id(method)``: sealed and bound to its owner like the features, dropped with them
  when the photos change (``replace_features``), erased with the avatar and by forget-me.
- Best of k: a render asks the engine for ``best_of`` candidates in one batch and keeps the
  ``count`` most like the avatar. An image the output check flagged ranks after every
  unflagged one (posting the image most like a person is no reason to post a flagged one),
  and a render that lost the face after every one that kept it (``LikenessScore.rank``).
"""

from __future__ import annotations

from dataclasses import replace

from bot.services.ports import RenderOutput
from kinds import LikenessScore

# Kept apart from the personalizers' encoder ids ("ip-adapter:…") in the features table.
_PREFIX = "likeness:"


def stored_id(method: str) -> str:
    """The features row's ``encoder_id`` of an enrolled identity measured by ``method``."""
    return _PREFIX + method


def label(score: LikenessScore | None) -> str:
    """One image's likeness as members read it (``/avatar help`` explains the figure)."""
    if score is None:
        return "not measured"
    if score.value is None:
        return "no face found"
    return f"{round(score.value * 100)} %"


def keep_best(output: RenderOutput, count: int) -> RenderOutput:
    """The ``count`` candidates most like the avatar, best first, with their seeds, verdicts
    and scores; ``output`` unchanged when it holds no more than ``count`` or has no scores."""
    total = len(output.pngs)
    if total <= count or len(output.likeness) != total:
        return output

    def order(i: int) -> tuple[bool, float, int]:
        flagged = bool(output.verdicts) and output.verdicts[i].flagged
        return (flagged, -output.likeness[i].rank, i)

    chosen = sorted(range(total), key=order)[:count]
    return replace(
        output,
        pngs=tuple(output.pngs[i] for i in chosen),
        seeds=tuple(output.seeds[i] for i in chosen),
        verdicts=tuple(output.verdicts[i] for i in chosen) if output.verdicts else (),
        likeness=tuple(output.likeness[i] for i in chosen),
    )
