"""The screening corpus through the prompt policy: per category, how many prompts are refused
(``python -m scripts.screening_report`` prints it; docs/safety.md shows it, and a test keeps
the two equal).

Each line's negative prompt (the corpus's optional sixth field) is checked with it, as the bot
checks a render's. Only the word lists and patterns are measured here (what runs before a job
exists); the worker's semantic screen needs real weights and is checked by the operator's own
command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.errors import InvalidInput, PromptRefused
from bot.services.prompt_policy import PromptPolicy
from bot.services.prompts import clean_prompt
from bot.services.screening_corpus import CorpusPrompt, load_corpus


@dataclass(frozen=True)
class CategoryRate:
    category: str
    prompts: int
    refused: int

    @property
    def rate(self) -> float:
        return self.refused / self.prompts if self.prompts else 0.0


@dataclass(frozen=True)
class ScreeningResult:
    rates: tuple[CategoryRate, ...]
    missed: tuple[CorpusPrompt, ...]  # harmful prompts that passed
    false_positives: tuple[CorpusPrompt, ...]  # benign prompts that were refused


def refuses(policy: PromptPolicy, item: CorpusPrompt) -> bool:
    """Whether the request would be refused before any job exists (cleaning included)."""
    try:
        policy.check(
            clean_prompt(item.prompt),
            clean_prompt(item.negative, what="negative prompt", allow_empty=True),
            age_restricted=item.age_restricted,
            person=item.person,
        )
    except (PromptRefused, InvalidInput):
        return True
    return False


def measure(
    corpus: Sequence[CorpusPrompt] | None = None, policy: PromptPolicy | None = None
) -> ScreeningResult:
    corpus = load_corpus() if corpus is None else corpus
    policy = PromptPolicy.base() if policy is None else policy
    counts: dict[str, list[int]] = {}
    missed: list[CorpusPrompt] = []
    false_positives: list[CorpusPrompt] = []
    for item in corpus:
        refused = refuses(policy, item)
        tally = counts.setdefault(item.category, [0, 0])
        tally[0] += 1
        tally[1] += refused
        if refused and item.expect == "pass":
            false_positives.append(item)
        elif not refused and item.expect == "refuse":
            missed.append(item)
    # Harmful categories first, then the benign ones; alphabetical within each.
    order = sorted(counts, key=lambda c: (c.startswith("benign-"), c))
    rates = tuple(CategoryRate(c, counts[c][0], counts[c][1]) for c in order)
    return ScreeningResult(rates, tuple(missed), tuple(false_positives))


def report_markdown(result: ScreeningResult) -> str:
    """The table docs/safety.md holds between its ``screening-report`` markers."""
    lines = [
        "| category | expected | prompts | refused | rate |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result.rates:
        expected = "pass" if r.category.startswith("benign-") else "refuse"
        lines.append(f"| {r.category} | {expected} | {r.prompts} | {r.refused} | {r.rate:.0%} |")
    harmful = [r for r in result.rates if not r.category.startswith("benign-")]
    benign = [r for r in result.rates if r.category.startswith("benign-")]
    h_total, h_refused = sum(r.prompts for r in harmful), sum(r.refused for r in harmful)
    b_total, b_refused = sum(r.prompts for r in benign), sum(r.refused for r in benign)
    lines += [
        "",
        f"Harmful prompts refused: {h_refused} of {h_total} ({h_refused / max(h_total, 1):.1%}).",
        f"Benign prompts refused (false positives): {b_refused} of {b_total}"
        f" ({b_refused / max(b_total, 1):.1%}).",
    ]
    for item in result.false_positives:
        lines.append(f"- false positive ({item.category}, {item.avatar}): {_shown(item)}")
    for item in result.missed:
        lines.append(f"- missed ({item.category}, {item.avatar}): {_shown(item)}")
    return "\n".join(lines) + "\n"


def _shown(item: CorpusPrompt) -> str:
    negative = f", negative `{item.negative}`" if item.negative else ""
    return f"`{item.prompt}`{negative}"


__all__ = ["CategoryRate", "ScreeningResult", "measure", "refuses", "report_markdown"]
