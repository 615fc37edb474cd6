"""Evaluation: compare personalizers and identity strengths on fixed seeds (``avatarbot eval``).

- ``metrics``: the ``IdentityMetric`` protocol (``name``, ``similarity(image, references)``),
  the dlib ``FaceIdentity``, the optional toy metric, ``ClipScorer`` (a local CLIP folder).
- ``grid``: the plan (personalizers x strengths x prompts x seeds, plus a baseline), the
  render-and-score loop, the per-row aggregates.
- ``report``: results.json, results.md, contact_sheet.png.

Importing this package does not import torch (the grid and CLIP load it when they run).
"""

from avatarbot_research.evaluation.grid import (
    BASELINE,
    EvalPlan,
    GridResult,
    RenderScore,
    Row,
    Scorer,
    aggregate,
    run_grid,
)
from avatarbot_research.evaluation.metrics import (
    METRIC_NAMES,
    ClipScorer,
    FaceIdentity,
    IdentityMetric,
    MetricUnavailable,
    load_identity_metric,
    scene_classifier,
)
from avatarbot_research.evaluation.report import (
    SheetCell,
    contact_sheet,
    evaluation_sheet,
    results_json,
    results_markdown,
    write_outputs,
)

__all__ = [
    "BASELINE",
    "METRIC_NAMES",
    "ClipScorer",
    "EvalPlan",
    "FaceIdentity",
    "GridResult",
    "IdentityMetric",
    "MetricUnavailable",
    "RenderScore",
    "Row",
    "Scorer",
    "SheetCell",
    "aggregate",
    "contact_sheet",
    "evaluation_sheet",
    "load_identity_metric",
    "results_json",
    "results_markdown",
    "run_grid",
    "scene_classifier",
    "write_outputs",
]
