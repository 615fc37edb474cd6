"""A job's settings column, typed (bot/services/job_settings.py): what the renders and avatars
services store reads back as the same values, old rows read with the defaults of their day,
and a column that does not hold what its kind stores fails the job (refunded, with a
reference the operator finds in the log) instead of rendering half-read settings."""

from __future__ import annotations

import logging
import re

import pytest
from sqlalchemy import select, update

from bot.services.container import Services
from bot.services.job_settings import (
    CorruptJobSettings,
    EncodeSettings,
    StoredRender,
    encode_column,
    read_encode,
    read_render,
    render_column,
    two_subjects,
)
from bot.services.results import PhotoRefusal, RenderSettings
from db.models import RenderJob
from kinds import DEFAULT_PERSONALIZER, JobStatus
from tests.fixtures.services import CHANNEL, GUILD, make_avatar

SETTINGS = RenderSettings(
    negative_prompt="blurry",
    style="watercolor",
    aspect="portrait",
    width=512,
    height=680,
    steps=12,
    guidance=4.5,
    count=3,
    seed=77,
    identity_strength=0.35,
    personalizer="instantbooth",
    age_restricted=True,
)


@pytest.mark.parametrize("second", [None, "Rex"])
def test_a_render_reads_back_as_it_was_stored(second: str | None) -> None:
    stored = StoredRender(SETTINGS, avatar_name="Mia", with_avatar_name=second)
    column = render_column(stored)
    # The negative prompt (sealed) and the seed have columns of their own.
    assert "negative_prompt" not in column and "seed" not in column
    assert read_render(column, "blurry", 77) == stored
    assert two_subjects(column) is (second is not None)


def test_a_row_from_before_a_field_existed_reads_with_that_days_default() -> None:
    stored = read_render({"width": 512, "height": 512, "avatar_name": "Mia"}, "", 5)
    assert stored.settings.personalizer == DEFAULT_PERSONALIZER
    assert stored.settings.age_restricted is False and stored.settings.count == 1
    assert stored.avatar_name == "Mia" and not stored.two_subjects


@pytest.mark.parametrize(
    "column",
    [
        {"width": "huge"},
        {"aspect": "circle"},
        {"count": None},
        {"age_restricted": "maybe"},
        {"guidance": [6.0]},
        {"avatar_name": {"nested": 1}},
        {"with_avatar_name": 12},
    ],
)
def test_a_column_of_the_wrong_shape_is_refused(column: dict[str, object]) -> None:
    with pytest.raises(CorruptJobSettings):
        read_render(column, "", 0)


def test_an_avatar_creation_reads_back_as_it_was_stored() -> None:
    settings = EncodeSettings(
        "ip-adapter",
        avatar_name="Mia",
        photo_names=("a.jpg", "b.png"),
        intake_refused=(PhotoRefusal("c.gif", "not_an_image", "Not an image."),),
    )
    assert read_encode(encode_column(settings)) == settings
    assert settings.photo_name(2) == "b.png" and settings.photo_name(9) == "photo 9"
    with pytest.raises(CorruptJobSettings):
        read_encode({"personalizer": "ip-adapter", "intake_refused": [{"filename": "x"}]})


async def test_a_job_whose_settings_cannot_be_read_fails_refunded_with_a_logged_reference(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    async with services.database.begin() as session:
        await session.execute(
            update(RenderJob).where(RenderJob.id == ticket.job_id).values(settings={"width": "x"})
        )
    with caplog.at_level(logging.ERROR, logger="bot.services.dispatcher"):
        assert await services.dispatcher.run_once() == ticket.job_id
    async with services.database.begin(readonly=True) as session:
        job = (await session.scalars(select(RenderJob).where(RenderJob.id == ticket.job_id))).one()
    assert job.status == JobStatus.FAILED and job.error_code == "internal_error"
    [reference] = re.findall(r"reference `(\w+)`", job.error or "")
    assert any(reference in r.getMessage() for r in caplog.records)
    assert (await services.quotas.usage(GUILD, 7)).used == 0
