"""`avatarbot job ...`: what happened to a job, and which loops are running.

    avatarbot job show 42      # its state and every attempt (worker, claimed, ended, outcome)
    avatarbot job workers      # the processes running the job loop, last seen first (the
                               # stopped ones when none runs; --all: always)

Reads the configured database only (no engine, no Discord).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING

from bot.cli.avatar_cmd import with_services

if TYPE_CHECKING:
    from bot.services.container import Services


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("job", help="a job's history, the running workers")
    actions = parser.add_subparsers(dest="job_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="a job's state and every attempt")
    show.add_argument("job_id", type=int, metavar="JOB")
    show.set_defaults(handler=with_services(_show))
    workers = actions.add_parser("workers", help="the processes running the job loop")
    workers.add_argument("--all", action="store_true", help="include stopped ones")
    workers.set_defaults(handler=with_services(_workers))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


async def _show(args: argparse.Namespace, services: Services) -> int:
    history = await services.jobs.history(args.job_id)
    job = history.job
    print(f"job {job.id}: {job.kind} for user {job.user_id}, {job.status}")
    print(f"  created   {_when(job.created_at)}")
    print(f"  started   {_when(job.started_at)}")
    print(f"  finished  {_when(job.finished_at)}")
    print(f"  delivered {_when(job.delivered_at)}")
    print(f"  attempts  {job.attempts} counted, {len(history.attempts)} in all")
    if history.worker_id:
        print(f"  worker    {history.worker_id} (lease until {_when(history.lease_expires_at)})")
    if job.error:
        print(f"  error     {job.error}")
    for a in history.attempts:
        outcome = a.outcome or "running"
        error = f"  {a.error}" if a.error else ""
        print(
            f"  #{a.number}  {a.worker_id}  claimed {_when(a.claimed_at)}  "
            f"ended {_when(a.ended_at)}  {outcome}{error}"
        )
    return 0


async def _workers(args: argparse.Namespace, services: Services) -> int:
    rows = await services.workers.list()
    running = [w for w in rows if w.stopped_at is None]
    stopped = len(rows) - len(running)
    if not rows:
        print("no job loop has run against this database yet")
    elif not running:
        # Issue 24: loops that ran and stopped are listed, not reported as never having run.
        print(f"no job loop is running; {stopped} stopped (last seen first):")
    for w in rows if args.all or not running else running:
        state = f"stopped {_when(w.stopped_at)}" if w.stopped_at else f"seen {_when(w.seen_at)}"
        print(f"{w.id}\t{w.profile or 'no engine'}\tstarted {_when(w.started_at)}\t{state}")
    if running and stopped and not args.all:
        print(f"({stopped} stopped: --all lists them)")
    return 0
