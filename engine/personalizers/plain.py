"""``none``: plain text-to-image with the shared pipeline, no concept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.errors import InvalidRequest
from engine.personalizers import register_personalizer
from engine.personalizers.base import DenoiseBatch, LoadContext, Personalizer, PreparedConditioning
from engine.pipeline import StableDiffusionPersonalizer
from engine.types import ConceptFeatures, ConceptKind

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine.subject_checks import FaceBox


class PlainPersonalizer(StableDiffusionPersonalizer):
    name = "none"
    encoder_id = "none"
    needs_features = False

    def encode(
        self,
        photos: Sequence[Image],
        kind: ConceptKind,
        face_boxes: Sequence[FaceBox | None] | None = None,
    ) -> ConceptFeatures:
        raise InvalidRequest("the 'none' personalizer renders without a concept: nothing to encode")

    def prepare(self, pipe: Any, batch: DenoiseBatch) -> PreparedConditioning:
        # No per-sample state: dropping rows needs nothing from us.
        return PreparedConditioning(select_rows=lambda samples, rows: None)


def _factory(context: LoadContext) -> Personalizer:
    return PlainPersonalizer()


register_personalizer("none", _factory)
