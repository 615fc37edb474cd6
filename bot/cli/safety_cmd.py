"""`avatarbot safety screen-check`: the semantic prompt screen on the operator's own weights.

    avatarbot safety screen-check                       # the shipped corpus, the configured profile
    avatarbot safety screen-check --corpus mine.tsv --profile flux2-klein-4b

Loads the engine (as a worker would), runs every prompt of the adversarial corpus
(bot/data/screening_corpus.tsv, or ``--corpus`` in the same format) through the semantic
screen with each line's avatar kind and channel, and prints per corpus category how many are
refused, the benign prompts refused (false positives), and per screen category the margins of
harmful and benign prompts (min / median / 90th percentile / max), so thresholds can be set
where the two separate (docs/semantic-screen.md). Only the semantic screen is measured here:
the word lists run before it in the bot. The screen reads the prompt only, so the harmful lines
whose harm is in their negative prompt (the corpus's sixth field: "me on a beach" with the
negative "clothes") are left out, and the report says how many; the word lists refuse those by
the negative (docs/safety.md). Operator mistakes end as one line on stderr, status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Settings

if TYPE_CHECKING:
    from bot.services.screening_corpus import CorpusPrompt
    from bot.services.semantic_screen import ScreenScores


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("safety", help="check the prompt safety screens on your weights")
    actions = parser.add_subparsers(dest="safety_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "screen-check",
        help="run the adversarial corpus through the semantic prompt screen",
        description="Load the engine, run every corpus prompt through the semantic prompt "
        "screen and print refusal rates per category, benign false positives and the margin "
        "distributions to set thresholds from.",
    )
    check.add_argument(
        "--corpus",
        type=Path,
        metavar="FILE",
        help="a corpus in the shipped format (default: bot/data/screening_corpus.tsv)",
    )
    check.add_argument("--profile", metavar="P", help="the engine profile (default: settings')")
    check.set_defaults(handler=_screen_check, needs_engine=True)


def _screen_check(args: argparse.Namespace, settings: Settings) -> int:
    try:
        prompts = _corpus(args.corpus)
    except ValueError as exc:
        print(f"avatarbot safety screen-check: {exc}", file=sys.stderr)
        return 2
    if args.profile:
        from engine.profiles import get_profile

        get_profile(args.profile)  # an unknown one: the CLI's one-line engine error
        engine = settings.engine.model_copy(update={"profile": args.profile})
        settings = settings.model_copy(update={"engine": engine})
    from bot.services.semantic_screen import ScreenUnavailable

    measured, left_out = by_prompt(prompts)
    try:
        lines = asyncio.run(_measure(settings, measured))
    except ScreenUnavailable as exc:  # the encoder failed: the reason, not the members' text
        print(f"avatarbot safety screen-check: {exc.reason}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    if left_out:
        print(
            f"\nleft out: {left_out} harmful lines whose harm is in the negative prompt "
            "(the screen reads the prompt only; the word lists refuse them by the negative)"
        )
    return 0


def by_prompt(prompts: Sequence[CorpusPrompt]) -> tuple[list[CorpusPrompt], int]:
    """The lines the semantic screen can judge, and how many harmful ones it cannot: those
    with a negative prompt, whose prompt alone is innocent by construction. Benign lines stay,
    negative or not (their prompt must pass)."""
    kept = [p for p in prompts if p.benign or not p.negative]
    return kept, len(prompts) - len(kept)


def _corpus(path: Path | None) -> list[CorpusPrompt]:
    from bot.services.screening_corpus import load_corpus, parse_corpus

    if path is None:
        return load_corpus()
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ValueError(f"no corpus file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the corpus {path}: {exc}") from None
    try:
        prompts = parse_corpus(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


async def _measure(settings: Settings, prompts: Sequence[CorpusPrompt]) -> list[str]:
    from bot.engine_adapter import build_engine_port
    from bot.services.semantic_screen import ScreenUnavailable, SemanticScreen

    engine = await build_engine_port(settings)
    try:
        screen = SemanticScreen(engine, settings.safety.semantic)
        facts = screen.facts()
        try:
            thresholds = screen.thresholds()
        except ScreenUnavailable:  # real weights without thresholds: measure them
            thresholds = None
        scores = await screen.scores([p.prompt for p in prompts])
    finally:
        await engine.aclose()
    header = [
        f"semantic screen on profile {settings.engine.profile}, text encoder {facts.encoder_id}"
        + (" (random weights: these numbers mean nothing)" if facts.random_weights else ""),
    ]
    return header + report(prompts, scores, thresholds)


def report(
    prompts: Sequence[CorpusPrompt],
    scores: Sequence[ScreenScores],
    thresholds: Mapping[str, float] | None,
) -> list[str]:
    """The printed report (one string a line) for ``prompts`` and their ``scores``."""
    from bot.services.semantic_screen import CATEGORIES, decide

    def refused(p: CorpusPrompt, s: ScreenScores) -> bool:
        if thresholds is None:
            return False
        verdict = decide(s.margins, thresholds, person=p.person, age_restricted=p.age_restricted)
        return verdict is not None

    lines = []
    if thresholds is None:
        lines.append("thresholds: none (the screen decides nothing; set them from the margins)")
    else:
        lines.append("thresholds: " + ", ".join(f"{c} {thresholds[c]:+.3f}" for c in CATEGORIES))
    lines += ["", f"{'category':<28}{'expect':>8}{'prompts':>9}{'refused':>9}{'rate':>8}"]
    by_category: dict[str, list[bool]] = {}
    for p, s in zip(prompts, scores, strict=True):
        by_category.setdefault(p.category, []).append(refused(p, s))
    expects = {p.category: p.expect for p in prompts}
    for category, outcomes in sorted(
        by_category.items(), key=lambda kv: (kv[0].startswith("benign-"), kv[0])
    ):
        n, k = len(outcomes), sum(outcomes)
        lines.append(f"{category:<28}{expects[category]:>8}{n:>9}{k:>9}{k / n:>8.0%}")
    harmful = [(p, s) for p, s in zip(prompts, scores, strict=True) if not p.benign]
    benign = [(p, s) for p, s in zip(prompts, scores, strict=True) if p.benign]
    blocked = sum(refused(p, s) for p, s in harmful)
    false_pos = [(p, s) for p, s in benign if refused(p, s)]
    lines.append("")
    lines.append(f"harmful refused: {blocked}/{len(harmful)} ({_rate(blocked, len(harmful))})")
    lines.append(
        f"benign refused (false positives): {len(false_pos)}/{len(benign)} "
        f"({_rate(len(false_pos), len(benign))})"
    )
    for p, s in false_pos:
        worst = max(CATEGORIES, key=lambda c: s.margins[c])
        lines.append(f"  {p.category}: {p.prompt!r} ({worst} {s.margins[worst]:+.3f})")
    lines += ["", "margins over the neutral concepts (min / median / p90 / max):"]
    for category in CATEGORIES:
        for label, group in (("harmful", harmful), ("benign", benign)):
            values = sorted(s.margins[category] for _, s in group)
            lines.append(f"  {category:<8}{label:<9}{_spread(values)}")
    if benign and harmful:
        # Just above every benign prompt's margin: the lowest thresholds that refuse none of
        # them, and what they would refuse of the harmful ones (a starting point to tune from).
        suggested = {c: round(max(s.margins[c] for _, s in benign) + 0.001, 3) for c in CATEGORIES}
        caught = sum(
            decide(s.margins, suggested, person=p.person, age_restricted=p.age_restricted)
            is not None
            for p, s in harmful
        )
        lines += [
            "",
            "lowest thresholds that refuse no benign prompt: "
            + ", ".join(f"{c} {suggested[c]:+.3f}" for c in CATEGORIES)
            + f" (they refuse {caught}/{len(harmful)} harmful, {_rate(caught, len(harmful))})",
        ]
    return lines


def _rate(k: int, n: int) -> str:
    return f"{k / n:.1%}" if n else "n/a"


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "no prompts"

    def at(q: float) -> float:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    return " / ".join(f"{v:+.3f}" for v in (values[0], at(0.5), at(0.9), values[-1]))
