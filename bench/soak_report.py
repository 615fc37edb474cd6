"""The fault-injection soak's results: the JSON document and the Markdown generated from it
(bench/soak.py runs the soak, bench/soak_checks.py judges it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

NAME = "soak"


def build_document(
    *,
    settings: dict[str, Any],
    code: dict[str, Any],
    machine: dict[str, Any],
    timing: dict[str, float],
    faults: dict[str, Any],
    checks: dict[str, Any],
    worker_logs: dict[str, Any],
) -> dict[str, Any]:
    jobs = checks["jobs"]
    return {
        "benchmark": NAME,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": code,
        "machine": machine,
        "settings": settings,
        "timing": {
            **timing,
            "jobs_per_s": round(jobs / timing["duration_s"], 2) if timing["duration_s"] else None,
        },
        "faults": faults,
        "checks": checks,
        "worker_logs": worker_logs,
    }


def _yes(value: bool) -> str:
    return "**pass**" if value else "**FAIL**"


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in values.items()) or "none"


def markdown(document: dict[str, Any]) -> str:
    m, s, t = document["machine"], document["settings"], document["timing"]
    f, c, logs = document["faults"], document["checks"], document["worker_logs"]
    v, renders, failures, ledger = c["verdicts"], c["renders"], c["failures"], c["ledger"]
    outages = "; ".join(
        f"{o['mode']} stop at {o['at_fraction']:.0%} of the jobs, down {o['down_s']} s, "
        f"first claim {o.get('first_claim_after_restart_s')} s after the restart"
        for o in f["outages"]
    )
    terminations = ", ".join(
        f"{x['terminated']} backends at {x['at_fraction']:.0%}" for x in f["backend_terminations"]
    )
    forgets = "; ".join(
        f"guild {r['guild']}: {r.get('jobs_erased', 'not erased')} jobs erased"
        + (f" after {len(r['errors'])} failed tries ({r['errors'][0]})" if r["errors"] else "")
        for r in f["forget_me"]
    )
    lines = [
        "# Fault-injection soak of the job runtime (PostgreSQL, fixed-time renders, CPU machine)",
        "",
        f"Measured {document['measured_at']} on {m['nproc']} × {m['cpu_model']}, "
        f"{m['platform']}, Python {m['python']}, PostgreSQL {m['postgresql']}; load average "
        f"(1 min) at start {m.get('load_average_1m')}, at the end {m.get('load_average_1m_end')} "
        "(a machine shared with other work). Code: commit "
        f"{document['code']['commit']}, {document['code']['tracked_files_changed']} tracked "
        "files changed since.",
        "",
        f"{s['jobs']} render jobs for {s['members']} members in {s['guilds']} guilds, at most "
        f"{s['queue_depth']} active at once; {s['workers']} worker processes "
        f"(`python -m bench.scaleout_worker`, the real job runtime, 1 slot, lease "
        f"{s['lease_seconds']:g} s, reap {s['reap_seconds']:g} s) with a "
        f"{s['render_seconds'] * 1000:g} ms fixed-time render; PostgreSQL, the bot's side and "
        "the workers share this machine's cores. Seed "
        f"{s['seed']}.",
        "",
        "## Verdicts",
        "",
        "| check | result | figures |",
        "| --- | --- | --- |",
        f"| none lost | {_yes(v['none_lost'])} | {c['lost']} accepted jobs missing, "
        f"{c['erased_not_by_forget_me']} erased by something else than forget-me |",
        f"| none rendered twice | {_yes(v['none_rendered_twice'])} | outputs written twice: "
        f"{c['outputs_written_twice']}; final state written twice: "
        f"{c['final_state_written_twice']} |",
        f"| no finished render redone | {_yes(v['no_finished_render_redone'])} | "
        f"{renders['finished_renders_redone']} finished renders thrown away and redone; "
        f"{renders['renders_lost_to_a_kill']} lost to a SIGKILL (legitimate) |",
        f"| failures legitimate | {_yes(v['no_illegitimate_failure'])} | "
        f"{failures['failed']} failed ({_pairs(failures['failed_by_code'])}); "
        f"{failures['failed_not_legitimately']} not explained by SIGKILLs |",
        f"| ledger exact | {_yes(v['ledger_exact'])} | charged {ledger['charged']}, refunded "
        f"{ledger['refunded']}, net {ledger['net']} (rules: {ledger['expected_net']}); "
        f"{ledger['jobs_wrong']} jobs and {len(ledger['members_wrong'])} members off |",
        f"| nothing stuck | {_yes(v['nothing_stuck'])} | {c['stuck']} queued or running "
        "after the drain |",
        f"| forget-me without errors | {_yes(v['forget_me_without_errors'])} | "
        f"{sum(len(r['errors']) for r in f['forget_me'])} failed tries in "
        f"{len(f['forget_me'])} forget-me (worker logs: "
        f"{logs['counts']['deadlock detected']} deadlocks) |",
        f"| run complete | {_yes(v['run_complete'])} | jobs enqueued: {c['accepted']} of "
        f"{s['jobs']}{' (stopped by the time bound)' if t['enqueue_timed_out'] else ''}; "
        f"worker slots given up: {f['worker_slots_abandoned']} |",
        "",
        "**All checks pass.**" if c["passed"] else "**Some checks fail** (details below).",
        "",
        "## The run",
        "",
        f"- Duration {t['duration_s']} s (enqueueing {t['enqueue_s']} s, drain {t['drain_s']} s"
        f"{'' if t['drained'] else ', did NOT drain in time'}); {t['jobs_per_s']} jobs/s.",
        f"- Jobs: {c['jobs']} ({c['accepted']} with a ticket, {c['without_a_ticket']} without); "
        f"by final state: {_pairs(c['by_status'])}.",
        f"- Renders finished: {renders['renders_finished']}; jobs by renders finished: "
        f"{_pairs(renders['jobs_by_renders_finished'])}; done jobs without a logged render: "
        f"{renders['done_without_a_logged_render']}.",
        f"- Attempts lost (lease expired): {failures['attempts_lost']}, of which "
        f"{failures['attempts_lost_with_the_worker_alive']} on a worker that was never "
        "SIGKILLed.",
        "",
        "## Faults injected",
        "",
        f"- SIGKILL: {f['sigkill']}; SIGTERM: {f['sigterm']}; worker starts {f['worker_starts']} "
        f"({f['worker_starts_failed']} failed starts retried); exits: "
        f"{_pairs(f['worker_exits'])}.",
        f"- PostgreSQL stops: {outages or 'none'}.",
        f"- Backend terminations: {terminations or 'none'}.",
        f"- Cancels: {_pairs(f['cancels'])}.",
        f"- Forget-me: {forgets or 'none'}.",
        f"- Requests refused during faults (retried): {_pairs(f['requests_refused'])}.",
        "",
        "## Ledger",
        "",
        f"Mismatches by kind: {_pairs(ledger['jobs_wrong_by_kind'])}; members off: "
        f"{_pairs(ledger['members_wrong'])}; rows attributed to nobody: "
        f"{ledger['rows_unattributed']}.",
        "",
        "## Worker logs",
        "",
        f"Counts: {_pairs(logs['counts'])}.",
        "",
        "| warning or error (numbers as N) | lines |",
        "| --- | --- |",
    ]
    for line, count in logs["warnings_and_errors"].items():
        lines.append(f"| `{line.replace('|', '/')}` | {count} |")
    lines.append("")
    return "\n".join(lines)
