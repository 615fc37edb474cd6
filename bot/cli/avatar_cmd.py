"""`avatarbot avatar ...`: the service layer without Discord, for operators and offline demos.

    avatarbot avatar create --user 42 --name Mia --kind person a.jpg b.jpg --consent
    avatarbot avatar list --user 42
    avatarbot avatar render --user 42 --avatar Mia --prompt "Mia as an astronaut" \\
        --count 2 --seed 7 --out renders/
    avatarbot avatar render --user 42 --avatar Mia --with Rex \\
        --prompt "the person from image 1 and the dog from image 2 on a beach"
    avatarbot avatar delete --user 42 --avatar Mia
    avatarbot avatar forget-me --user 42
    avatarbot avatar usage --user 42 [--guild 123]
    avatarbot avatar reencrypt            # after rotating AVATARBOT_DATA_KEY

Every command acts for the member ``--user`` (a Discord user id), through the same services
the bot uses, on the configured database (upgraded to head first). ``create`` and ``render``
queue a job like the bot does, then wait until it has run:

- A live render worker exists (bot/services/workers.py ``live``): it runs the job; this
  process loads no engine and waits for the job's events (LISTEN on PostgreSQL). So does a
  host with ``AVATARBOT_RUN_WORKER=false``, which never runs jobs.
- None exists: this process loads the engine (``AVATARBOT_ENGINE__PROFILE=tiny`` runs offline
  in seconds) and runs the queue until that job has run (jobs queued before it, in the fair
  order, run too).
- ``--no-wait``: queue it, print its id and exit; whoever runs jobs runs it.

The other commands load no engine. Without ``--guild`` the default quotas apply, counted apart
from every guild.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Settings
from kinds import SUBJECT_KINDS, JobStatus, SubjectKind

if TYPE_CHECKING:
    from bot.services.container import Services
    from bot.services.events import JobEvent
    from bot.services.results import JobTicket, JobView
    from db.session import Database

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("avatar", help="avatars and renders for a user, without Discord")
    actions = parser.add_subparsers(dest="avatar_command", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="create an avatar from photos")
    _user(create)
    create.add_argument("--name", required=True)
    create.add_argument("--kind", choices=SUBJECT_KINDS, default=SubjectKind.PERSON)
    create.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    create.add_argument(
        "--consent",
        action="store_true",
        help="confirm these are photos of the user, or ones they may use (required)",
    )
    _waiting(create)
    create.set_defaults(handler=with_services(_create, _check_create), needs_engine=True)

    listing = actions.add_parser("list", help="list the user's avatars")
    _user(listing)
    listing.set_defaults(handler=with_services(_list))

    render = actions.add_parser("render", help="render an avatar and write the PNGs")
    _user(render)
    render.add_argument("--avatar", required=True, metavar="NAME")
    render.add_argument(
        "--with",
        dest="with_avatar",
        metavar="NAME",
        help="another of the user's avatars in the same picture (“image 2” in the prompt; "
        "needs a personalizer that shows two subjects, e.g. the tiny-flux2 profile's)",
    )
    render.add_argument("--prompt", required=True)
    render.add_argument("--negative-prompt", default="")
    render.add_argument("--style", default="none")
    render.add_argument("--aspect", choices=["square", "portrait", "landscape"], default="square")
    render.add_argument("--count", type=int, default=1)
    render.add_argument("--seed", type=int)
    render.add_argument("--steps", type=int)
    render.add_argument("--strength", type=float, default=0.7, help="identity strength 0..1")
    render.add_argument(
        "--best-of",
        type=int,
        metavar="K",
        help="render K candidates, keep the --count most like the avatar (default: the guild's)",
    )
    render.add_argument("--out", type=Path, default=Path("renders"), metavar="DIR")
    _waiting(render)
    render.set_defaults(handler=with_services(_render, _check_render), needs_engine=True)

    upscale = actions.add_parser(
        "upscale", help="upscale one image of a finished render x2 and write the PNG"
    )
    _refined(upscale)
    vary = actions.add_parser("vary", help="vary one image of a finished render, write the PNGs")
    _refined(vary)
    vary.add_argument("--strength", choices=["subtle", "strong"], default="subtle")

    delete = actions.add_parser("delete", help="delete one of the user's avatars")
    _user(delete)
    delete.add_argument("--avatar", required=True, metavar="NAME")
    delete.set_defaults(handler=with_services(_delete))

    forget = actions.add_parser("forget-me", help="erase everything stored about the user")
    _user(forget)
    _yes(forget)
    forget.set_defaults(handler=with_services(_forget, _confirm_forget))

    usage = actions.add_parser("usage", help="the user's renders today and when they reset")
    _user(usage)
    usage.set_defaults(handler=with_services(_usage))

    reencrypt = actions.add_parser(
        "reencrypt", help="re-seal every stored photo, feature and output with the current key"
    )
    reencrypt.set_defaults(handler=with_services(_reencrypt))


def _waiting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="queue the job, print its id and exit (a worker runs it; `avatarbot job show ID`)",
    )


def _refined(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``upscale`` and ``vary``: the render and its image."""
    _user(parser)
    parser.add_argument("--job", type=int, required=True, metavar="ID", help="the render's job")
    parser.add_argument(
        "--index", type=int, required=True, metavar="N", help="its image, 1 for the first"
    )
    parser.add_argument("--out", type=Path, default=Path("renders"), metavar="DIR")
    _waiting(parser)
    parser.set_defaults(handler=with_services(_refine, _check_refine), needs_engine=True)


def _user(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", type=int, required=True, metavar="ID", help="Discord user id")
    parser.add_argument(
        "--guild",
        type=int,
        metavar="ID",
        help="act as in this guild (default: outside servers, on the personal quotas)",
    )


Action = Callable[[argparse.Namespace, "Services"], Awaitable[int]]


def with_services(
    action: Action, precheck: Callable[[argparse.Namespace], int | None] | None = None
) -> Callable[[argparse.Namespace, Settings], int]:
    """A command's handler: ``precheck`` (None: go on), then ``action`` with the services on
    the configured database (upgraded to head), and the engine when the command sets
    ``needs_engine`` and may run its job here."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        # Refuse what can be refused before loading a model (seconds to minutes).
        status = precheck(args) if precheck is not None else None
        if status is not None:
            return status

        # No engine for a job that this process will not run (``--no-wait``).
        with_engine = getattr(args, "needs_engine", False) and not getattr(args, "no_wait", False)

        async def main() -> int:
            async with _services(settings, with_engine=with_engine) as services:
                return await action(args, services)

        return asyncio.run(main())

    return run


@asynccontextmanager
async def _services(settings: Settings, *, with_engine: bool) -> AsyncIterator[Services]:
    from bot.services.container import build_services
    from bot.services.ports import EnginePort
    from db.migrate import upgrade
    from db.session import Database

    database = Database.from_url(settings.effective_database_url)
    engine: EnginePort | None = None
    try:
        await upgrade(database)
        if with_engine and await _runs_jobs_here(settings, database):
            from bot.engine_adapter import build_engine_port

            # A log line (JSON with --log-format json), not a bare one on stderr.
            logger.info("loading engine profile %s", settings.engine.profile)
            engine = await build_engine_port(settings)
        services = await build_services(settings, database, engine)
        try:
            yield services
        finally:
            await services.aclose()
    finally:
        if engine is not None:
            await engine.aclose()
        await database.dispose()


# A render worker refreshes its ``seen_at`` every ``reap_seconds``: one not seen for this many
# of those is taken for dead (killed, or cut off from the database).
LIVE_HEARTBEATS = 3


async def _runs_jobs_here(settings: Settings, database: Database) -> bool:
    """Whether this process runs the job itself: not on a host that runs no jobs
    (``AVATARBOT_RUN_WORKER=false``), nor while a live render worker would claim it first."""
    from bot.services.workers import WorkerRegistry

    if not settings.run_worker:
        return False
    within = LIVE_HEARTBEATS * settings.jobs.reap_seconds
    return not await WorkerRegistry(database).live(within_seconds=within)


def _yes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def confirm(args: argparse.Namespace, question: str, *, command: str) -> int | None:
    """None when the operator confirmed (``--yes``, or "y" typed at a terminal); otherwise
    the exit status, after one line saying why nothing was done."""
    if getattr(args, "yes", False):
        return None
    if not sys.stdin.isatty():
        print(
            f"avatarbot {command}: refusing without confirmation; pass --yes to run it "
            "non-interactively",
            file=sys.stderr,
        )
        return 2
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in {"y", "yes"}:
        return None
    print(f"avatarbot {command}: cancelled", file=sys.stderr)
    return 1


def _confirm_forget(args: argparse.Namespace) -> int | None:
    return confirm(
        args,
        f"Erase every avatar, photo, render and consent record of user {args.user}?",
        command="avatar forget-me",
    )


# The hard limits of a render request (the services check the guild's quotas, which may be
# lower); checked here so a refused request costs no engine load.
MAX_COUNT = 4
MAX_STEPS = 150


def _check_render(args: argparse.Namespace) -> int | None:
    problems = []
    if not 1 <= args.count <= MAX_COUNT:
        problems.append(f"--count must be 1 to {MAX_COUNT}")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        problems.append(f"--steps must be 1 to {MAX_STEPS}")
    if not 0.0 <= args.strength <= 1.0:
        problems.append("--strength must be 0 to 1")
    if args.best_of is not None and not 1 <= args.best_of <= MAX_COUNT:
        problems.append(f"--best-of must be 1 to {MAX_COUNT}")
    if args.timeout <= 0:
        problems.append("--timeout must be positive")
    if not args.prompt.strip():
        problems.append("--prompt must not be empty")
    if args.with_avatar is not None and _same_name(args.with_avatar, args.avatar):
        problems.append("--with must name another avatar than --avatar")
    if problems:
        print(f"avatarbot avatar render: {'; '.join(problems)}", file=sys.stderr)
        return 2
    return None


def _same_name(a: str, b: str) -> bool:
    from bot.services.names import name_key

    return name_key(" ".join(a.split())) == name_key(" ".join(b.split()))


def _check_create(args: argparse.Namespace) -> int | None:
    if not args.consent:
        print(
            "avatarbot: pass --consent to confirm these are photos of the user, or photos "
            "they have permission to use",
            file=sys.stderr,
        )
        return 2
    args.files = []
    for path in args.photos:
        try:
            args.files.append((path.name, path.read_bytes()))
        except OSError as exc:
            print(f"avatarbot: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return 1
    return None


async def _create(args: argparse.Namespace, services: Services) -> int:
    await _listen(args, services)
    ticket = await services.avatars.create(
        args.user, args.guild, args.name, args.kind, args.files, consent=True
    )
    if args.no_wait:
        return _queued(ticket.job_id, None)
    if await _until_finished(args, services, ticket.job_id, _ignore) is None:
        return 1
    created = await services.avatars.creation_result(ticket.job_id)
    await services.jobs.mark_delivered(ticket.job_id)
    avatar = created.avatar
    print(f"created {avatar.kind} avatar “{avatar.name}” with {avatar.photo_count} photo(s)")
    for name in created.kept:
        print(f"  kept     {name}")
    for refusal in created.refused:
        print(f"  refused  {refusal.filename}: {refusal.reason}: {refusal.message}")
    for warning in created.warnings:
        print(f"  warning  {warning.filename}: {warning.message}")
    return 0


async def _list(args: argparse.Namespace, services: Services) -> int:
    avatars = await services.avatars.list(args.user)
    if not avatars:
        print(f"user {args.user} has no avatars")
    for a in avatars:
        print(f"{a.name}\t{a.kind}\t{a.photo_count} photo(s)\tcreated {a.created_at:%Y-%m-%d}")
    return 0


async def _render(args: argparse.Namespace, services: Services) -> int:
    from bot.services.results import RenderOptions

    options = RenderOptions(
        negative_prompt=args.negative_prompt,
        style=args.style,
        aspect=args.aspect,
        count=args.count,
        seed=args.seed,
        identity_strength=args.strength,
        steps=args.steps,
        best_of=args.best_of,
    )
    await _listen(args, services)
    ticket = await services.renders.request(
        args.user, args.guild, None, args.avatar, args.prompt, options, with_avatar=args.with_avatar
    )
    return await _written(args, services, ticket)


def _check_refine(args: argparse.Namespace) -> int | None:
    if args.timeout <= 0:
        command = f"avatarbot avatar {args.avatar_command}"
        print(f"{command}: --timeout must be positive", file=sys.stderr)
        return 2
    return None


async def _refine(args: argparse.Namespace, services: Services) -> int:
    """``upscale`` and ``vary``: a refinement job of one image, waited for like a render."""
    await _listen(args, services)
    if args.avatar_command == "upscale":
        ticket = await services.renders.upscale(args.user, args.job, args.index)
    else:
        ticket = await services.renders.vary(args.user, args.job, args.index, args.strength)
    return await _written(args, services, ticket)


async def _written(args: argparse.Namespace, services: Services, ticket: JobTicket) -> int:
    """A queued render's job waited for (unless ``--no-wait``), its PNGs written to
    ``--out``, one path per line on stdout."""
    from bot.services import likeness
    from engine.profiles import get_profile, resolve_profile

    if args.no_wait:
        return _queued(ticket.job_id, ticket.position)
    print(f"job {ticket.job_id} queued (position {ticket.position})", file=sys.stderr)
    from tqdm import tqdm

    with tqdm(total=100, file=sys.stderr, desc="render", bar_format=PROGRESS_BAR) as bar:

        def show(progress: JobView) -> None:
            done = 1.0 if progress.status is JobStatus.DONE else progress.progress
            bar.update(round(done * 100) - bar.n)

        view = await _until_finished(args, services, ticket.job_id, show)
    if view is None:
        return 1
    if view.status is not JobStatus.DONE:
        print(f"avatarbot: job {view.id} {view.status}: {view.error or ''}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    scores = view.likeness or (None,) * view.output_count
    outputs = await services.jobs.outputs(view.id)
    for image, seed, score in zip(outputs, view.seeds, scores, strict=True):
        path = args.out / f"job{view.id}-seed{seed}.png"
        path.write_bytes(image)
        print(path)
        if score is not None:  # stdout stays one path per line, for scripts
            print(f"{path.name}: likeness {likeness.label(score)}", file=sys.stderr)
    await services.jobs.mark_delivered(view.id)
    # The profile that rendered them: this process's, or the render workers' (their facts).
    if services.engine is not None:
        profile = resolve_profile(services.settings.engine)
    else:
        profile = get_profile((await services.workers.current_facts()).profile)
    if profile.is_noise:
        print(
            f"note: profile {profile.name} runs random weights; these images are noise",
            file=sys.stderr,
        )
    return 0


PROGRESS_BAR = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}"


async def _listen(args: argparse.Namespace, services: Services) -> None:
    """Before queueing a job that a worker will run: hear its events from now on (LISTEN on
    PostgreSQL), so none between the queueing and the wait is missed."""
    if services.engine is None and not args.no_wait:
        await services.events.start()


def _queued(job_id: int, position: int | None) -> int:
    """``--no-wait``: the job's id on stdout (for scripts), what happens next on stderr."""
    print(job_id)
    where = "" if position is None else f" (position {position})"
    print(
        f"job {job_id} queued{where}; a worker runs it; `avatarbot job show {job_id}` follows it",
        file=sys.stderr,
    )
    return 0


def _ignore(view: JobView) -> None:
    """No progress to show (an avatar's creation)."""


async def _until_finished(
    args: argparse.Namespace, services: Services, job_id: int, show: Callable[[JobView], None]
) -> JobView | None:
    """The job's final view, run here when this process has the engine, else by a worker;
    None (said on stderr) when it did not finish within ``--timeout``."""
    if services.engine is None:
        print(f"job {job_id}: waiting for a render worker to run it", file=sys.stderr)
        waiting = _follow(services, job_id, show)
    else:
        waiting = _run_here(services, job_id, show)
    try:
        return await asyncio.wait_for(waiting, args.timeout)
    except TimeoutError:
        print(f"avatarbot: job {job_id} did not finish in {args.timeout:g} s", file=sys.stderr)
        return None


async def _run_here(services: Services, job_id: int, show: Callable[[JobView], None]) -> JobView:
    """Run the queue until the job has run, following its progress meanwhile."""
    follower = asyncio.create_task(_follow(services, job_id, show))
    try:
        view = await services.dispatcher.run_job(job_id)
    finally:
        follower.cancel()  # run_job has returned or failed: nothing more to show
        await asyncio.gather(follower, return_exceptions=True)
    show(view)
    return view


async def _follow(services: Services, job_id: int, show: Callable[[JobView], None]) -> JobView:
    """Wait until the job is final, showing each view of it: woken by the job's events (the
    dispatcher announces its progress every few seconds, whichever process runs it), and after
    a lost notification connection."""
    changed = asyncio.Event()

    def on_event(event: JobEvent) -> None:
        if event.job_id == job_id:
            changed.set()

    unsubscribe = services.events.subscribe(on_event)
    unresync = services.events.on_resync(changed.set)
    try:
        view = await services.jobs.view(job_id)
        while not view.finished:  # bounded by the caller's timeout
            # poll: on SQLite another process's events never reach this one, so the job is
            # also read again every poll_seconds.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), services.settings.jobs.poll_seconds)
            changed.clear()
            view = await services.jobs.view(job_id)
            show(view)
    finally:
        unsubscribe()
        unresync()
    return view


async def _delete(args: argparse.Namespace, services: Services) -> int:
    await services.avatars.delete(args.user, args.avatar)
    print(f"deleted avatar “{args.avatar}” of user {args.user}")
    return 0


async def _forget(args: argparse.Namespace, services: Services) -> int:
    report = await services.privacy.forget_me(args.user)
    print(
        f"erased user {args.user}: {report.avatars} avatar(s), {report.photos} photo(s), "
        f"{report.features} feature set(s), {report.consents} consent record(s), "
        f"{report.jobs} job(s), {report.outputs} image(s); "
        f"{report.ledger_rows_anonymised} usage record(s) kept without the user id"
    )
    return 0


async def _usage(args: argparse.Namespace, services: Services) -> int:
    usage = await services.quotas.usage(args.guild, args.user)
    print(
        f"{usage.used} of {usage.limit} renders used today; {usage.remaining} left; "
        f"resets at {usage.resets_at:%Y-%m-%d %H:%M} UTC"
    )
    return 0


async def _reencrypt(args: argparse.Namespace, services: Services) -> int:
    try:
        report = await services.privacy.reencrypt()
    except ValueError as exc:
        print(f"avatarbot: {exc}", file=sys.stderr)
        return 2
    print(
        f"re-sealed {report.photos} photo(s), {report.features} feature set(s), "
        f"{report.outputs} output(s), {report.jobs} job(s)' prompts, "
        f"{report.asks} friend request(s)' prompts; "
        f"{report.unchanged} already under the current key"
    )
    if not services.cipher.strict:
        print(
            "every stored blob is now sealed: set AVATARBOT_ENCRYPTION_STRICT=true to refuse "
            "unsealed data from now on"
        )
    return 0
