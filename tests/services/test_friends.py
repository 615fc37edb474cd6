"""Renders with another member's avatar, with their consent (issue 26), through the services
on ``tiny-flux2`` (two subjects): what is checked before the owner is asked, approve once,
always allow, decline, expiry, revoke, rerolls, the guild's setting, and erasure by either
member or by deleting the avatar. The same on SimCord: tests/bot/test_friends.py."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bot.errors import Forbidden, InvalidInput, NotFound, NotOwner, PromptRefused, QuotaExceeded
from bot.services.container import Services, build_services
from bot.services.ports import EnginePort
from db.models import AvatarAsk, AvatarGrant, RenderJob
from db.session import Database
from db.types import utcnow
from tests.fixtures.services import (
    CHANNEL,
    GUILD,
    TINY_FLUX2,
    create_now,
    face_photo,
    make_photo,
    service_settings,
)

ALICE, BOB, CAROL = 7, 8, 9
PROMPT = "the mug from image 1 and the cat from image 2 on a beach"


async def everyone_is_a_member(guild_id: int, user_id: int) -> bool:
    return True


async def _avatar(services: Services, owner: int, name: str, seed: int, kind: str = "object"):  # type: ignore[no-untyped-def]
    files = [(f"{name}-{i}.png", make_photo(seed * 10 + i, size=256)) for i in range(2)]
    return (await create_now(services, owner, GUILD, name, kind, files)).avatar


async def ask(services: Services, prompt: str = PROMPT, requester: int = ALICE):  # type: ignore[no-untyped-def]
    return await services.friends.ask(
        requester, GUILD, CHANNEL, "Mug", BOB, "Cat", prompt, is_member=everyone_is_a_member
    )


async def used(services: Services, member: int = ALICE) -> int:
    return (await services.quotas.usage(GUILD, member)).used


async def renders(services: Services) -> list[RenderJob]:
    async with services.database.begin(readonly=True) as session:
        return list(await session.scalars(select(RenderJob).where(RenderJob.kind == "render")))


@pytest.fixture
async def friends(two_subject_services: Services) -> Services:
    services = two_subject_services
    await _avatar(services, ALICE, "Mug", 1)
    await _avatar(services, BOB, "Cat", 2, "pet")
    return services


async def test_nothing_is_asked_of_an_avatar_not_shared(friends: Services) -> None:
    with pytest.raises(Forbidden) as refused:
        await ask(friends)
    assert "that others may ask for" in refused.value.message
    assert await friends.friends.pending(BOB) == []
    # Another member's avatar is never found by the plain ``with`` either.
    with pytest.raises(NotFound):
        await friends.renders.request(ALICE, GUILD, CHANNEL, "Mug", PROMPT, with_avatar="Cat")


async def test_approve_once_then_ask_again_then_always_allow_then_revoke(
    friends: Services,
) -> None:
    services = friends
    assert await services.friends.set_others_may_ask(BOB, "cat", True) == "Cat"
    asked = await ask(services)
    assert asked.ticket is None and asked.waiting is not None
    waiting = asked.waiting
    assert (waiting.requester_id, waiting.owner_id, waiting.avatar_name) == (ALICE, BOB, "Cat")
    assert (waiting.requester_avatar_name, waiting.prompt) == ("Mug", PROMPT)
    # Nothing queued or charged before the answer.
    assert await renders(services) == [] and await used(services) == 0
    assert [a.id for a in await services.friends.pending(BOB)] == [waiting.id]

    # Only Bob answers.
    with pytest.raises(NotOwner):
        await services.friends.approve(
            ALICE, waiting.id, always=False, is_member=everyone_is_a_member
        )
    answered = await services.friends.approve(
        BOB, waiting.id, always=False, is_member=everyone_is_a_member
    )
    assert answered.ticket is not None
    [job] = await renders(services)
    cat = (await services.avatars.list(BOB))[0]
    assert (job.id, job.user_id, job.with_avatar_id) == (answered.ticket.job_id, ALICE, cat.id)
    assert await used(services) == 1 and await used(services, BOB) == 0
    with pytest.raises(InvalidInput):  # answered once
        await services.friends.approve(
            BOB, waiting.id, always=False, is_member=everyone_is_a_member
        )
    # Approving once was for that render: a reroll asks again, so does a new request.
    with pytest.raises(Forbidden):
        await services.renders.reroll(ALICE, job.id)
    again = await ask(services)
    assert again.waiting is not None

    always = await services.friends.approve(
        BOB, again.waiting.id, always=True, is_member=everyone_is_a_member
    )
    assert always.ticket is not None and await used(services) == 2
    [grant] = await services.friends.grants(BOB)
    assert (grant.avatar_name, grant.owner_id, grant.grantee_id) == ("Cat", BOB, ALICE)
    assert await services.friends.grants(ALICE) == [grant]
    # Always allowed: queued at once, and rerolls too.
    direct = await ask(services)
    assert direct.ticket is not None and direct.waiting is None
    await services.renders.reroll(ALICE, direct.ticket.job_id)
    assert await used(services) == 4
    # Bob turning asking off does not end the grant; revoking does (either member may).
    await services.friends.set_others_may_ask(BOB, "Cat", False)
    assert (await ask(services)).ticket is not None
    assert await services.friends.revoke(ALICE, BOB, "cat") == "Cat"
    assert await services.friends.grants(BOB) == []
    with pytest.raises(Forbidden):
        await ask(services)
    with pytest.raises(Forbidden):
        await services.renders.reroll(ALICE, direct.ticket.job_id)
    with pytest.raises(NotFound):
        await services.friends.revoke(BOB, ALICE, "Cat")


async def test_declined_and_expired_requests_charge_nothing(friends: Services) -> None:
    services = friends
    # The operator's setting (AVATARBOT_FRIEND_REQUEST_MINUTES), 15 minutes by default.
    assert services.settings.friend_request_minutes == 15
    await services.friends.set_others_may_ask(BOB, "Cat", True)
    declined = (await ask(services)).waiting
    assert declined is not None
    await services.friends.decline(BOB, declined.id)
    with pytest.raises(InvalidInput):
        await services.friends.approve(
            BOB, declined.id, always=False, is_member=everyone_is_a_member
        )

    expired = (await ask(services)).waiting
    assert expired is not None
    async with services.database.begin(readonly=True) as session:
        row = await session.get(AvatarAsk, expired.id)
        assert row is not None and row.expires_at - row.created_at == timedelta(minutes=15)
    async with services.database.begin() as session:
        await session.execute(
            update(AvatarAsk)
            .where(AvatarAsk.id == expired.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert await services.friends.pending(BOB) == []
    with pytest.raises(InvalidInput) as refused:
        await services.friends.approve(
            BOB, expired.id, always=False, is_member=everyone_is_a_member
        )
    assert "expired" in refused.value.message
    assert await renders(services) == [] and await used(services) == 0
    # The maintenance pass deletes expired requests with their prompts.
    await services.jobs.purge_expired()
    with pytest.raises(NotFound):
        await services.friends.approve(
            BOB, expired.id, always=False, is_member=everyone_is_a_member
        )


async def test_an_approval_the_requesters_quota_refuses_leaves_the_request_open(
    friends: Services,
) -> None:
    services = friends
    await services.friends.set_others_may_ask(BOB, "Cat", True)
    waiting = (await ask(services)).waiting
    assert waiting is not None
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=1)
    await services.renders.request(ALICE, GUILD, CHANNEL, "Mug", "alone")  # the day's one
    with pytest.raises(QuotaExceeded):
        await services.friends.approve(BOB, waiting.id, always=True, is_member=everyone_is_a_member)
    # Nothing queued, charged or granted; Bob can still answer once Alice has room again.
    assert [a.id for a in await services.friends.pending(BOB)] == [waiting.id]
    assert await used(services) == 1 and await services.friends.grants(BOB) == []
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=2)
    answered = await services.friends.approve(
        BOB, waiting.id, always=False, is_member=everyone_is_a_member
    )
    assert answered.ticket is not None and await used(services) == 2


async def test_the_prompt_policy_sees_both_subjects_before_anyone_is_asked(
    two_subject_services: Services,
) -> None:
    services = two_subject_services
    await _avatar(services, ALICE, "Mug", 1)
    await create_now(services, BOB, GUILD, "Bob", "person", [("me.jpg", face_photo())])
    await services.friends.set_others_may_ask(BOB, "Bob", True)
    # Alice's avatar is an object: alone, an age-restricted channel would allow this.
    for age_restricted in (False, True):
        with pytest.raises(PromptRefused):
            await services.friends.ask(
                ALICE, GUILD, CHANNEL, "Mug", BOB, "Bob", "a nude statue",
                age_restricted=age_restricted, is_member=everyone_is_a_member,
            )  # fmt: skip
    assert await services.friends.pending(BOB) == []
    assert await used(services) == 0


async def test_the_guild_and_membership_decide_first(friends: Services) -> None:
    services = friends
    await services.friends.set_others_may_ask(BOB, "Cat", True)

    async def bob_left(guild_id: int, user_id: int) -> bool:
        return user_id != BOB

    with pytest.raises(Forbidden) as refused:
        await services.friends.ask(
            ALICE, GUILD, CHANNEL, "Mug", BOB, "Cat", PROMPT, is_member=bob_left
        )
    assert refused.value.message == "Both members must belong to this server."
    waiting = (await ask(services)).waiting
    assert waiting is not None
    await services.friends.set_cross_member_renders(GUILD, False, actor_id=1, actor_is_admin=True)
    with pytest.raises(Forbidden) as forbidden:
        await ask(services)
    assert forbidden.value.message == (
        "This server does not allow renders with another member's avatar."
    )
    with pytest.raises(Forbidden):  # nor is one asked before approved now
        await services.friends.approve(
            BOB, waiting.id, always=False, is_member=everyone_is_a_member
        )
    assert await used(services) == 0
    with pytest.raises(Forbidden):
        await services.friends.set_cross_member_renders(
            GUILD, True, actor_id=2, actor_is_admin=False
        )


async def _joint_render(services: Services) -> int:
    waiting = (await ask(services)).waiting
    assert waiting is not None
    answered = await services.friends.approve(
        BOB, waiting.id, always=True, is_member=everyone_is_a_member
    )
    assert answered.ticket is not None
    await services.jobs.record_posted(answered.ticket.job_id, CHANNEL, 4242)
    return answered.ticket.job_id


@pytest.mark.parametrize("who", ["owner", "requester"])
async def test_either_members_forget_me_erases_the_joint_render(
    friends: Services, who: str
) -> None:
    services = friends
    await services.friends.set_others_may_ask(BOB, "Cat", True)
    joint = await _joint_render(services)
    # Alice's own render stays when Bob erases his data.
    own = await services.renders.request(ALICE, GUILD, CHANNEL, "Mug", "on a beach")
    report = await services.privacy.forget_me(BOB if who == "owner" else ALICE)
    assert report.posted == ((CHANNEL, 4242),)
    assert report.joint_jobs == 1 and report.grants == 1
    ids = [j.id for j in await renders(services)]
    assert joint not in ids
    assert (own.job_id in ids) == (who == "owner")
    async with services.database.begin(readonly=True) as session:
        assert list(await session.scalars(select(AvatarGrant))) == []
        assert list(await session.scalars(select(AvatarAsk))) == []


async def test_deleting_the_avatar_erases_the_joint_render(friends: Services) -> None:
    services = friends
    await services.friends.set_others_may_ask(BOB, "Cat", True)
    joint = await _joint_render(services)
    # Always allowed: queued at once. No worker runs here, so both wait and are refunded.
    queued = (await ask(services)).ticket
    assert queued is not None and await used(services) == 2
    erased = await services.avatars.delete(BOB, "Cat")
    assert erased.posted == ((CHANNEL, 4242),) and erased.jobs == 2
    assert [j.id for j in await renders(services) if j.id in (joint, queued.job_id)] == []
    assert await used(services) == 0
    assert await services.friends.grants(ALICE) == []


async def test_the_request_keeps_the_prompt_sealed_and_is_reencrypted(
    database: Database, tmp_path: Path, tiny_flux2_port: EnginePort
) -> None:
    def key(key_id: str) -> str:
        secret = hashlib.sha256(key_id.encode()).digest()
        return f"{key_id}:" + base64.urlsafe_b64encode(secret).decode()

    first = await build_services(
        service_settings(tmp_path, engine=TINY_FLUX2, data_key=key("one")),
        database,
        tiny_flux2_port,
    )
    try:
        await _avatar(first, ALICE, "Mug", 1)
        await _avatar(first, BOB, "Cat", 2, "pet")
        await first.friends.set_others_may_ask(BOB, "Cat", True)
        waiting = (await ask(first)).waiting
        assert waiting is not None and waiting.prompt == PROMPT
        async with database.begin(readonly=True) as session:
            sealed = await session.get(AvatarAsk, waiting.id)
            assert sealed is not None and "beach" not in sealed.prompt
            before = sealed.prompt
    finally:
        await first.aclose()
    services = await build_services(
        service_settings(
            tmp_path, engine=TINY_FLUX2, data_key=key("two"), old_data_keys=key("one")
        ),
        database,
        tiny_flux2_port,
    )
    try:
        report = await services.privacy.reencrypt()
        assert report.asks == 1
        async with database.begin(readonly=True) as session:
            row = await session.get(AvatarAsk, waiting.id)
            assert row is not None and row.prompt != before and "beach" not in row.prompt
        answered = await services.friends.approve(
            BOB, waiting.id, always=False, is_member=everyone_is_a_member
        )
        assert answered.ticket is not None
        assert (await services.jobs.view(answered.ticket.job_id)).prompt == PROMPT
    finally:
        await services.aclose()
