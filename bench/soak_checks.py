"""The fault-injection soak's instrumentation and its end-of-run checks (bench/soak.py runs
them; the thresholds are the issue's: none lost, none rendered twice, ledger exact, nothing
stuck).

Instrumentation: triggers in the soak's own database copy what the application writes into
``soak_*`` tables it never reads, so the checks see what happened even to rows the run later
changed or erased: every ledger row as inserted (with its job id, which deleting the job sets
to NULL), every status change of a job, every output row inserted, and the last state of every
job that was deleted (forget-me). Nothing in bot/ or db/ knows of them.

The render logs: each worker process's ``FixedTimeEngine`` appends ``<seed> <time>`` per
finished render, and the soak gives every job its own seed, so the logs count the renders each
job had. A job rendered twice whose first render's process was SIGKILLed within a lease of it
lost that render to the kill; any other second render means a finished render was thrown away
("finished render redone").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kinds import JobStatus

INSTRUMENT_SQL = (
    """CREATE TABLE soak_ledger (
        id bigint, entry text, job_id bigint, user_id bigint, user_key text, amount int,
        note text)""",
    """CREATE FUNCTION soak_ledger_copy() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO soak_ledger VALUES (NEW.id, NEW.entry, NEW.job_id, NEW.user_id,
            NEW.user_key, NEW.amount, NEW.note);
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER soak_ledger_copy AFTER INSERT ON usage_ledger
        FOR EACH ROW EXECUTE FUNCTION soak_ledger_copy()""",
    """CREATE TABLE soak_transitions (
        job_id bigint, old_status text, new_status text, worker_id text,
        at timestamptz DEFAULT clock_timestamp())""",
    """CREATE FUNCTION soak_transition() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO soak_transitions (job_id, old_status, new_status, worker_id)
            VALUES (NEW.id, OLD.status, NEW.status, COALESCE(NEW.worker_id, OLD.worker_id));
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER soak_transition AFTER UPDATE ON render_jobs
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION soak_transition()""",
    """CREATE TABLE soak_outputs (job_id bigint, index int)""",
    """CREATE FUNCTION soak_output() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO soak_outputs VALUES (NEW.job_id, NEW.index);
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER soak_output AFTER INSERT ON job_outputs
        FOR EACH ROW EXECUTE FUNCTION soak_output()""",
    """CREATE TABLE soak_erased (
        id bigint, kind text, user_id bigint, seed bigint, status text,
        started_at timestamptz, error_code text, at timestamptz DEFAULT clock_timestamp())""",
    """CREATE FUNCTION soak_erase() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO soak_erased (id, kind, user_id, seed, status, started_at, error_code)
            VALUES (OLD.id, OLD.kind, OLD.user_id, OLD.seed, OLD.status, OLD.started_at,
                OLD.error_code);
        RETURN OLD;
    END $$""",
    """CREATE TRIGGER soak_erase BEFORE DELETE ON render_jobs
        FOR EACH ROW EXECUTE FUNCTION soak_erase()""",
)

FINAL = {str(s) for s in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)}
ACTIVE = {str(JobStatus.QUEUED), str(JobStatus.RUNNING)}
# Why a job that failed may have failed: its attempts ran out because its workers were
# SIGKILLed each time (checked against the kills below). Anything else is a defect.
LEGIT_FAILURE = "interrupted"


@dataclass(frozen=True)
class Job:
    """A render job's last state: as it ended, or as it was when forget-me deleted it."""

    id: int
    user_id: int
    seed: int
    status: str
    started_at: datetime | None
    error_code: str | None
    erased: bool


@dataclass(frozen=True)
class Render:
    """One finished render in a worker's render log."""

    seed: int
    at: float
    start: int  # which worker start (``WorkerStart.number``) rendered it


@dataclass(frozen=True)
class Kill:
    """A SIGKILL the soak sent: which worker start, when (unix time)."""

    start: int
    worker_id: str
    at: float


@dataclass
class Observed:
    """Everything the checks read, gathered once the run drained."""

    accepted: dict[int, int]  # job id -> member, for every request the controller got a ticket
    jobs: dict[int, Job]
    forgotten: set[int]  # members erased by forget-me
    ledger: list[tuple[int, str, int | None, int | None, str | None, int]]
    keys: dict[str, int]  # user_key -> member (rows keyed by forget-me)
    finals_per_job: Counter[int]
    outputs_per_job: Counter[int]
    lost_attempts: list[tuple[int, str]]  # (job id, worker id) of attempts closed "lost"
    renders: list[Render]
    kills: list[Kill]
    lease_seconds: float


def expected_refunds(job: Job) -> int:
    """The refunds the project's quota rules give ``job`` (bot/services/ledger.py,
    RenderService.cancel, JobService.recover, issue 23 for forget-me): a failed job is
    refunded; a cancelled one only if no worker had started it; a queued job erased by
    forget-me, which never started, is refunded too; done, running-when-erased and (stuck)
    active jobs keep their unit."""
    if job.status == JobStatus.FAILED:
        return 1
    if job.status == JobStatus.CANCELLED:
        return 1 if job.started_at is None else 0
    if job.erased and job.status == JobStatus.QUEUED:
        return 1
    return 0


def check_ledger(seen: Observed) -> dict[str, Any]:
    """Per job: one reservation, the expected refunds; per member: reserved - refunded over
    all their rows (by id, job or forget-me key) = what their jobs keep."""
    reserves: Counter[int] = Counter()
    refunds: Counter[int] = Counter()
    member_net: Counter[int] = Counter()
    unattributed = 0
    job_member = {job.id: job.user_id for job in seen.jobs.values()}
    for _row_id, entry, job_id, user_id, user_key, amount in seen.ledger:
        sign = {"reserve": 1, "refund": -1}.get(entry)
        if sign is None:
            continue
        if job_id is not None:
            (reserves if sign > 0 else refunds)[job_id] += amount
        member = user_id if user_id is not None else seen.keys.get(user_key or "")
        if member is None and job_id is not None:
            member = job_member.get(job_id)
        if member is None:
            unattributed += 1
            continue
        member_net[member] += sign * amount
    by_kind: Counter[str] = Counter()
    wrong_jobs: list[int] = []
    expected_net: Counter[int] = Counter()
    for job in seen.jobs.values():
        want = expected_refunds(job)
        expected_net[job.user_id] += 1 - want
        if reserves[job.id] != 1:
            by_kind["reservations not exactly one"] += 1
            wrong_jobs.append(job.id)
        elif refunds[job.id] != want:
            state = ("erased " if job.erased else "") + job.status
            by_kind[f"{state}: refunded {refunds[job.id]}, rules say {want}"] += 1
            wrong_jobs.append(job.id)
    members = sorted(set(expected_net) | set(member_net))
    wrong_members = {
        m: {"net": member_net[m], "expected": expected_net[m]}
        for m in members
        if member_net[m] != expected_net[m]
    }
    return {
        "charged": sum(reserves.values()),
        "refunded": sum(refunds.values()),
        "net": sum(member_net.values()),
        "expected_net": sum(expected_net.values()),
        "jobs_wrong": len(wrong_jobs),
        "jobs_wrong_by_kind": dict(by_kind),
        "jobs_wrong_sample": sorted(wrong_jobs)[:20],
        "members_wrong": {str(m): v for m, v in wrong_members.items()},
        "rows_unattributed": unattributed,
        "exact": not wrong_jobs and not wrong_members and not unattributed,
    }


def check_renders(seen: Observed) -> dict[str, Any]:
    """Renders finished per job (render logs), and which second renders were not the
    result of a kill: a finished render thrown away."""
    by_seed: dict[int, list[Render]] = {}
    for render in seen.renders:
        by_seed.setdefault(render.seed, []).append(render)
    seeds = {job.seed: job for job in seen.jobs.values()}
    kills = {kill.start: kill for kill in seen.kills}
    histogram: Counter[int] = Counter()
    redone: list[int] = []
    after_kill = 0
    for seed, renders in by_seed.items():
        job = seeds.get(seed)
        if job is None:
            continue
        histogram[len(renders)] += 1
        renders.sort(key=lambda r: r.at)
        for earlier in renders[:-1]:
            kill = kills.get(earlier.start)
            if kill is not None and earlier.at <= kill.at <= earlier.at + seen.lease_seconds:
                after_kill += 1
            else:
                redone.append(job.id)
    done_without = [
        j.id for j in seen.jobs.values() if j.status == JobStatus.DONE and j.seed not in by_seed
    ]
    return {
        "renders_finished": len(seen.renders),
        "renders_of_unknown_jobs": sum(len(v) for s, v in by_seed.items() if s not in seeds),
        "jobs_by_renders_finished": {str(k): v for k, v in sorted(histogram.items())},
        "renders_lost_to_a_kill": after_kill,
        "finished_renders_redone": len(redone),
        "redone_jobs_sample": sorted(set(redone))[:20],
        "done_without_a_logged_render": len(done_without),
    }


def check_failures(seen: Observed) -> dict[str, Any]:
    """Failed jobs by error code; ``interrupted`` is legitimate only when every attempt it
    lost was on a worker the soak SIGKILLed."""
    killed = {kill.worker_id for kill in seen.kills}
    lost_on: dict[int, list[str]] = {}
    for job_id, worker_id in seen.lost_attempts:
        lost_on.setdefault(job_id, []).append(worker_id)
    codes: Counter[str] = Counter()
    legit = 0
    for job in seen.jobs.values():
        if job.status != JobStatus.FAILED:
            continue
        codes[job.error_code or "?"] += 1
        workers = lost_on.get(job.id, [])
        if job.error_code == LEGIT_FAILURE and workers and all(w in killed for w in workers):
            legit += 1
    failed = sum(codes.values())
    lease_lost_alive = sum(1 for _, worker in seen.lost_attempts if worker not in killed)
    return {
        "failed": failed,
        "failed_by_code": dict(codes),
        "failed_legitimately": legit,
        "failed_not_legitimately": failed - legit,
        "attempts_lost": len(seen.lost_attempts),
        "attempts_lost_with_the_worker_alive": lease_lost_alive,
    }


def run_checks(seen: Observed) -> dict[str, Any]:
    """The verdicts and the figures behind them."""
    statuses = Counter(("erased " if j.erased else "") + j.status for j in seen.jobs.values())
    lost = sorted(set(seen.accepted) - set(seen.jobs))
    stuck = sorted(j.id for j in seen.jobs.values() if not j.erased and j.status in ACTIVE)
    erased_other = sorted(
        j.id for j in seen.jobs.values() if j.erased and j.user_id not in seen.forgotten
    )
    twice_final = sorted(j for j, n in seen.finals_per_job.items() if n > 1)
    twice_outputs = sorted(j for j, n in seen.outputs_per_job.items() if n > 1)
    renders = check_renders(seen)
    failures = check_failures(seen)
    ledger = check_ledger(seen)
    verdicts = {
        "none_lost": not lost and not erased_other,
        "none_rendered_twice": not twice_final and not twice_outputs,
        "no_finished_render_redone": renders["finished_renders_redone"] == 0,
        "no_illegitimate_failure": failures["failed_not_legitimately"] == 0,
        "ledger_exact": ledger["exact"],
        "nothing_stuck": not stuck,
    }
    return {
        "jobs": len(seen.jobs),
        "accepted": len(seen.accepted),
        "without_a_ticket": len(set(seen.jobs) - set(seen.accepted)),
        "by_status": dict(sorted(statuses.items())),
        "lost": len(lost),
        "lost_sample": lost[:20],
        "erased_not_by_forget_me": len(erased_other),
        "stuck": len(stuck),
        "stuck_sample": stuck[:20],
        "final_state_written_twice": len(twice_final),
        "outputs_written_twice": len(twice_outputs),
        "duplicated_sample": sorted(set(twice_final) | set(twice_outputs))[:20],
        "renders": renders,
        "failures": failures,
        "ledger": ledger,
        "verdicts": verdicts,
        "passed": all(verdicts.values()),
    }


def read_render_logs(logs: Mapping[int, Path]) -> list[Render]:
    """The renders each worker start logged (``start number -> file``)."""
    found: list[Render] = []
    for start, path in logs.items():
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:  # a line cut by a SIGKILL has fewer
                found.append(Render(int(parts[0]), float(parts[1]), start))
    return found


async def instrument(connection: Any) -> None:
    """Install the soak's triggers (an asyncpg connection to the soak's database)."""
    for statement in INSTRUMENT_SQL:
        await connection.execute(statement)


async def gather(
    connection: Any,
    *,
    accepted: dict[int, int],
    forgotten: Iterable[int],
    renders: list[Render],
    kills: Sequence[Kill],
    lease_seconds: float,
) -> Observed:
    """Read what the checks need (an asyncpg connection to the soak's database)."""
    jobs: dict[int, Job] = {}
    for r in await connection.fetch(
        "SELECT id, user_id, seed, status, started_at, error_code FROM render_jobs "
        "WHERE kind = 'render'"
    ):
        jobs[r["id"]] = Job(
            r["id"], r["user_id"], r["seed"], r["status"], r["started_at"], r["error_code"], False
        )
    for r in await connection.fetch(
        "SELECT id, user_id, seed, status, started_at, error_code FROM soak_erased "
        "WHERE kind = 'render'"
    ):
        jobs[r["id"]] = Job(
            r["id"], r["user_id"], r["seed"], r["status"], r["started_at"], r["error_code"], True
        )
    ledger = [
        (r["id"], r["entry"], r["job_id"], r["user_id"], r["user_key"], r["amount"])
        for r in await connection.fetch(
            "SELECT id, entry, job_id, user_id, user_key, amount FROM soak_ledger"
        )
    ]
    keys = {
        r["user_key"]: r["user_id"]
        for r in await connection.fetch(
            "SELECT DISTINCT u.user_key, s.user_id FROM usage_ledger u "
            "JOIN soak_ledger s ON s.id = u.id "
            "WHERE u.user_key IS NOT NULL AND s.user_id IS NOT NULL"
        )
    }
    finals = Counter(
        {
            r["job_id"]: r["n"]
            for r in await connection.fetch(
                "SELECT job_id, count(*) AS n FROM soak_transitions "
                "WHERE new_status = ANY($1::text[]) GROUP BY job_id",
                sorted(FINAL),
            )
        }
    )
    outputs = Counter(
        {
            r["job_id"]: r["n"]
            for r in await connection.fetch(
                "SELECT job_id, max(n) AS n FROM (SELECT job_id, index, count(*) AS n "
                "FROM soak_outputs GROUP BY job_id, index) per GROUP BY job_id"
            )
        }
    )
    lost = [
        (r["job_id"], r["worker_id"])
        for r in await connection.fetch(
            "SELECT job_id, worker_id FROM job_attempts WHERE outcome = 'lost'"
        )
    ]
    return Observed(
        accepted=accepted,
        jobs=jobs,
        forgotten=set(forgotten),
        ledger=ledger,
        keys=keys,
        finals_per_job=finals,
        outputs_per_job=outputs,
        lost_attempts=lost,
        renders=renders,
        kills=list(kills),
        lease_seconds=lease_seconds,
    )


async def claim_gaps(connection: Any, restarts: Sequence[datetime]) -> list[float | None]:
    """Seconds from each database restart to the next claim (a job becoming running)."""
    gaps: list[float | None] = []
    for at in restarts:
        first = await connection.fetchval(
            "SELECT min(at) FROM soak_transitions WHERE new_status = 'running' AND at >= $1", at
        )
        gaps.append(round((first - at).total_seconds(), 2) if first is not None else None)
    return gaps
