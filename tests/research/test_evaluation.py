"""avatarbot_research.evaluation without an engine: the dlib face metric on real faces, the
plan's seed chunks, the aggregates and the contact sheet."""

from __future__ import annotations

from pathlib import Path

import pytest
from avatarbot_research.evaluation import (
    EvalPlan,
    FaceIdentity,
    IdentityMetric,
    RenderScore,
    Row,
    SheetCell,
    aggregate,
    contact_sheet,
)
from PIL import Image

from engine.types import ConceptKind
from tests.fixtures.engine import make_photo

FACES = Path(__file__).resolve().parents[1] / "fixtures" / "faces"


@pytest.fixture(scope="module")
def face_metric() -> FaceIdentity:
    pytest.importorskip("dlib")
    return FaceIdentity.load()


def test_the_face_metric_tells_the_same_person_from_another(face_metric: FaceIdentity) -> None:
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    mirrored = astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((300, 300))
    with Image.open(FACES / "grace_hopper.jpg") as photo:
        hopper = photo.convert("RGB")
    assert isinstance(face_metric, IdentityMetric)
    same = face_metric.similarity(mirrored, [astronaut])
    other = face_metric.similarity(hopper, [astronaut])
    assert same is not None and other is not None
    assert 0.0 <= other < face_metric.match_threshold < same <= 1.0
    # No face in the image, or none in the references: no score.
    assert face_metric.similarity(make_photo(0, 256), [astronaut]) is None
    assert face_metric.similarity(astronaut, [make_photo(1, 256)]) is None
    assert face_metric.faces_found([astronaut, make_photo(2, 256)]) == [True, False]


def test_the_plan_chunks_seeds_into_requests() -> None:
    plan = EvalPlan(
        prompts=("a", "b"),
        personalizers=("ip-adapter",),
        strengths=(0.5, 1.0),
        seeds=6,
        kind=ConceptKind.PERSON,
        width=64,
        height=64,
        steps=2,
        guidance=5.0,
        baseline=True,
    )
    assert [row.label for row in plan.rows] == ["baseline", "ip-adapter 0.5", "ip-adapter 1"]
    assert [row.slug for row in plan.rows] == ["baseline", "ip-adapter-s0.5", "ip-adapter-s1"]
    assert plan.total_images == 3 * 2 * 6
    requests = plan.requests(Row("none", None), None)
    assert [(i, r.seed, r.count) for i, r in requests] == [
        (0, 0, 4),
        (0, 4, 2),
        (1, 0, 4),
        (1, 4, 2),
    ]


def test_aggregates_count_unscored_renders_apart() -> None:
    row, baseline = Row("ip-adapter", 0.7), Row("none", None)

    def score(identity: float | None, clip: float | None = None, row: Row = row) -> RenderScore:
        return RenderScore(row.personalizer, row.strength, 0, "p", 0, "f.png", identity, clip)

    records = [score(0.2, 0.1), score(0.5, 0.3), score(0.9), score(None), score(None, row=baseline)]
    [mine, base] = aggregate(records, [row, baseline], match_threshold=0.4)
    assert (mine["renders"], mine["found"], mine["not_found"]) == (4, 3, 1)
    assert mine["identity_mean"] == pytest.approx(1.6 / 3)
    assert mine["identity_median"] == 0.5 and mine["found_rate"] == 0.75
    assert mine["match_rate"] == 0.5  # of all four renders, two above 0.4
    assert mine["clip_text_mean"] == pytest.approx(0.2) and mine["clip_image_mean"] is None
    assert base["baseline"] and base["identity_mean"] is None and base["found_rate"] == 0.0


def test_contact_sheet_lays_out_rows_and_columns() -> None:
    cells = [SheetCell(make_photo(i, 64), f"id 0.{i}") for i in range(3)]
    rows = [("refs", cells[:1]), ("row", [*cells[1:], SheetCell(None)])]
    sheet = contact_sheet(rows, ["p1 seed 0\na prompt", "p1 seed 1", "p2 seed 0"], cell=48)
    assert sheet.width >= 3 * 48 and sheet.height >= 2 * 48
    # The first row's image lands in its cell: not the white background.
    assert sheet.getpixel((150, 40)) != (255, 255, 255)
