"""The evaluation grid: every (personalizer, strength, prompt, seed) rendered with fixed seeds,
scored, and summarised per personalizer x strength.

``run_grid`` encodes the references once per personalizer, submits a row's renders together
(the engine batches what it can) and scores each image on a helper thread while the engine
renders the next ones.
"""

from __future__ import annotations

import asyncio
import logging
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.types import MAX_COUNT, ConceptFeatures, ConceptKind, RenderRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from avatarbot_research.evaluation.metrics import ClipScorer, IdentityMetric
    from engine.engine import DiffusionEngine

logger = logging.getLogger(__name__)

BASELINE = "none"  # the personalizer that renders the prompt alone


@dataclass(frozen=True)
class Row:
    """One personalizer at one strength (``strength`` None: the unpersonalized baseline)."""

    personalizer: str
    strength: float | None

    @property
    def is_baseline(self) -> bool:
        return self.strength is None

    @property
    def label(self) -> str:
        return "baseline" if self.is_baseline else f"{self.personalizer} {self.strength:g}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label.replace(" ", "-s"))


@dataclass(frozen=True)
class EvalPlan:
    prompts: tuple[str, ...]
    personalizers: tuple[str, ...]
    strengths: tuple[float, ...]
    seeds: int
    kind: ConceptKind
    width: int
    height: int
    steps: int
    guidance: float
    baseline: bool = False
    negative_prompt: str = ""

    @property
    def rows(self) -> list[Row]:
        rows = [Row(BASELINE, None)] if self.baseline else []
        return rows + [Row(p, s) for p in self.personalizers for s in self.strengths]

    @property
    def total_images(self) -> int:
        return len(self.rows) * len(self.prompts) * self.seeds

    def requests(
        self, row: Row, features: ConceptFeatures | None
    ) -> list[tuple[int, RenderRequest]]:
        """(prompt index, request) for a row: seeds 0..seeds-1 per prompt, MAX_COUNT a request."""
        out = []
        for index, prompt in enumerate(self.prompts):
            for first in range(0, self.seeds, MAX_COUNT):
                request = RenderRequest(
                    prompt=prompt,
                    negative_prompt=self.negative_prompt,
                    width=self.width,
                    height=self.height,
                    steps=self.steps,
                    guidance=self.guidance,
                    seed=first,
                    count=min(MAX_COUNT, self.seeds - first),
                    identity_strength=0.0 if row.strength is None else row.strength,
                    personalizer=row.personalizer,
                    features=features,
                )
                out.append((index, request))
        return out


@dataclass
class RenderScore:
    """One render and its scores (None: not measured, or the metric could not tell)."""

    personalizer: str
    strength: float | None
    prompt_index: int
    prompt: str
    seed: int
    file: str
    identity: float | None = None
    clip_text: float | None = None
    clip_image: float | None = None
    scene: str | None = None

    @property
    def row(self) -> Row:
        return Row(self.personalizer, self.strength)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scorer:
    """The metrics of one evaluation, bound to its references."""

    references: Sequence[Image]
    identity: IdentityMetric | None = None
    clip: ClipScorer | None = None
    scene_class: Callable[[Image], str] | None = None

    def score(self, record: RenderScore, image: Image) -> None:
        if self.identity is not None:
            record.identity = self.identity.similarity(image, self.references)
        if self.scene_class is not None:
            record.scene = str(self.scene_class(image))
        if self.clip is not None:
            record.clip_text = self.clip.text_score(image, record.prompt)
            record.clip_image = self.clip.image_score(image, self.references)


@dataclass
class GridResult:
    records: list[RenderScore]
    thumbnails: dict[tuple[Row, int, int], Image] = field(default_factory=dict)


async def run_grid(
    engine: DiffusionEngine,
    plan: EvalPlan,
    scorer: Scorer,
    out_dir: Path,
    *,
    thumbnail: int = 128,
    on_image: Callable[[], None] | None = None,
) -> GridResult:
    """Render and score the whole plan; PNGs go to ``out_dir/renders/<row>/``."""
    result = GridResult(records=[])
    features: dict[str, ConceptFeatures | None] = {}
    for name in dict.fromkeys(row.personalizer for row in plan.rows):
        if name == BASELINE or not engine.model.personalizers[name].needs_features:
            features[name] = None
            continue
        logger.info("encoding %d reference photo(s) with %s", len(scorer.references), name)
        features[name] = await engine.encode(scorer.references, plan.kind, name)
    for row in plan.rows:
        logger.info(
            "rendering %s: %d prompt(s) x %d seed(s)", row.label, len(plan.prompts), plan.seeds
        )
        await _run_row(
            engine,
            plan,
            row,
            features[row.personalizer],
            scorer,
            out_dir,
            result,
            thumbnail,
            on_image,
        )
    return result


async def _run_row(
    engine: DiffusionEngine,
    plan: EvalPlan,
    row: Row,
    features: ConceptFeatures | None,
    scorer: Scorer,
    out_dir: Path,
    result: GridResult,
    thumbnail: int,
    on_image: Callable[[], None] | None,
) -> None:
    folder = out_dir / "renders" / row.slug
    requests = plan.requests(row, features)
    tasks = [asyncio.ensure_future(engine.render(request)) for _, request in requests]
    try:
        for (index, request), task in zip(requests, tasks, strict=True):
            rendered = await task
            for seed, image in zip(rendered.seeds, rendered.images, strict=True):
                path = folder / f"p{index + 1:02d}-seed{seed}.png"
                record = RenderScore(
                    personalizer=row.personalizer,
                    strength=row.strength,
                    prompt_index=index,
                    prompt=request.prompt,
                    seed=seed,
                    file=str(path.relative_to(out_dir)),
                )
                small = await asyncio.to_thread(
                    _save_and_score, scorer, record, image, path, thumbnail
                )
                result.records.append(record)
                result.thumbnails[(row, index, seed)] = small
                if on_image is not None:
                    on_image()
    finally:
        for task in tasks:
            task.cancel()


def _save_and_score(
    scorer: Scorer, record: RenderScore, image: Image, path: Path, thumbnail: int
) -> Image:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    scorer.score(record, image)
    small = image.copy()
    small.thumbnail((thumbnail, thumbnail))
    return small


def aggregate(
    records: Sequence[RenderScore], rows: Sequence[Row], match_threshold: float | None = None
) -> list[dict[str, Any]]:
    """Per row: renders, identity mean/median over the scored ones, the share scored
    (``found_rate``: for faces, renders with a face), CLIP means, and with a threshold the
    share of all renders scoring above it (``match_rate``)."""
    out = []
    for row in rows:
        mine = [r for r in records if r.row == row]
        scored = [r.identity for r in mine if r.identity is not None]
        entry: dict[str, Any] = {
            "personalizer": row.personalizer,
            "strength": row.strength,
            "baseline": row.is_baseline,
            "renders": len(mine),
            "identity_mean": _mean(scored),
            "identity_median": statistics.median(scored) if scored else None,
            "found": len(scored),
            "not_found": len(mine) - len(scored),
            "found_rate": len(scored) / len(mine) if mine else None,
            "clip_text_mean": _mean([r.clip_text for r in mine if r.clip_text is not None]),
            "clip_image_mean": _mean([r.clip_image for r in mine if r.clip_image is not None]),
        }
        if match_threshold is not None:
            matches = sum(1 for s in scored if s > match_threshold)
            entry["match_rate"] = matches / len(mine) if mine else None
        out.append(entry)
    return out


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None
