"""Engine facts as workers publish them through the database and a bot without the model
reads them back: every field survives the round trip, and rows written before a field existed
still parse (a personalizer shows one subject; the guidance is left to the bot's settings)."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from bot.services.ports import EngineFacts, EnginePort
from bot.services.workers import NoRenderWorker, WorkerRegistry
from db.models import Worker
from db.session import Database

FACTS = EngineFacts(
    profile="tiny-flux2",
    default_personalizer="flux2-klein",
    encoders={"flux2-klein": "flux2-vae:abc", "none": "none"},
    native_size=64,
    default_steps=4,
    max_prompt_tokens=512,
    tokenizer_json=None,
    max_subjects={"flux2-klein": 2, "none": 1},
    default_guidance=1.0,
    size_multiple=16,
    refines={"flux2-klein": frozenset({"upscale"}), "none": frozenset({"upscale", "vary"})},
)

# A facts row as workers wrote it before two-subject renders.
OLD_ROW = {
    "profile": "tiny",
    "default_personalizer": "ip-adapter",
    "encoders": {"ip-adapter": "ip:1"},
    "native_size": 64,
    "default_steps": 4,
    "max_prompt_tokens": 75,
}


def test_json_round_trip() -> None:
    data = FACTS.to_json()
    assert data["max_subjects"] == {"flux2-klein": 2, "none": 1}
    assert data["default_guidance"] == 1.0
    assert data["refines"] == {"flux2-klein": ["upscale"], "none": ["upscale", "vary"]}
    assert EngineFacts.from_json(data, None) == FACTS
    assert FACTS.refines_with("flux2-klein", "upscale")
    assert not FACTS.refines_with("flux2-klein", "vary")
    assert not FACTS.refines_with("ip-adapter", "upscale")  # not published: none
    assert FACTS.subjects_for("flux2-klein") == 2
    assert FACTS.subjects_for("none") == 1


def test_rows_written_before_still_parse() -> None:
    old = EngineFacts.from_json(OLD_ROW, None)
    assert old.max_subjects == {} and old.subjects_for("ip-adapter") == 1
    assert old.default_guidance is None
    assert old.size_multiple == 8  # Stable Diffusion's VAE factor
    assert EngineFacts.from_json({**OLD_ROW, "max_subjects": None}, None).max_subjects == {}
    assert old.refines == {}


def test_a_worker_of_one_bool_per_personalizer_meant_both_refinements() -> None:
    row = {**OLD_ROW, "refines": {"ip-adapter": True, "flux2-klein": False}}
    facts = EngineFacts.from_json(row, None)
    assert facts.refines == {"ip-adapter": {"upscale", "vary"}, "flux2-klein": frozenset()}
    assert facts.refines_with("ip-adapter", "vary")
    assert not facts.refines_with("flux2-klein", "upscale")
    # A newer worker's refinement this bot does not know is left out.
    newer = EngineFacts.from_json({**OLD_ROW, "refines": {"x": ["upscale", "remix"]}}, None)
    assert newer.refines == {"x": {"upscale"}}


@pytest.mark.parametrize(
    "bad",
    [
        {"max_subjects": ["flux2-klein"]},
        {"max_subjects": {"flux2-klein": "two"}},
        {"default_guidance": "nan"},
        {"default_guidance": True},
        {"default_guidance": [1.0]},
        {"size_multiple": "sixteen"},
        {"refines": ["upscale"]},
        {"refines": {"flux2-klein": "upscale"}},
        {"refines": {"flux2-klein": [1]}},
    ],
)
def test_unreadable_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EngineFacts.from_json({**OLD_ROW, **bad}, None)


def test_the_real_engine_publishes_subjects_and_guidance(tiny_engine_port: EnginePort) -> None:
    facts = tiny_engine_port.facts()
    assert facts.max_subjects == {name: 1 for name in facts.encoders}
    assert facts.default_guidance == 6.0  # the SD1.5 profiles' guidance
    assert facts.size_multiple == 8
    assert facts.refines["ip-adapter"] == {"upscale", "vary"}  # both through image-to-image
    assert EngineFacts.from_json(facts.to_json(), facts.tokenizer_json) == facts


def test_a_two_subject_engine_publishes_it(tiny_flux2_port: EnginePort) -> None:
    facts = tiny_flux2_port.facts()
    assert facts.default_personalizer == "flux2-klein"
    assert facts.subjects_for("flux2-klein") == 2
    assert facts.default_guidance == 1.0  # FLUX.2 [klein] is distilled: no real CFG
    assert facts.size_multiple == 16  # the VAE's 8, then 2x2 patches
    assert facts.refines == {"flux2-klein": {"upscale"}}  # no Vary: no image-to-image
    assert EngineFacts.from_json(facts.to_json(), facts.tokenizer_json) == facts


async def test_facts_cross_the_database(database: Database, tiny_engine_port: EnginePort) -> None:
    published = tiny_engine_port.facts()
    await WorkerRegistry(database, FACTS).register("worker-a")
    read = await WorkerRegistry(database).current_facts()
    assert read == FACTS

    # A worker of the previous version: its row has neither field.
    await WorkerRegistry(database, published).register("worker-b")
    async with database.begin() as session:
        await session.execute(update(Worker).where(Worker.id == "worker-b").values(facts=OLD_ROW))
    old = await WorkerRegistry(database).current_facts()
    assert (old.profile, old.default_guidance) == ("tiny", None)
    assert old.subjects_for("ip-adapter") == 1

    async with database.begin() as session:
        await session.execute(update(Worker).values(facts={**OLD_ROW, "max_subjects": "garbled"}))
    with pytest.raises(NoRenderWorker):
        await WorkerRegistry(database).current_facts()
