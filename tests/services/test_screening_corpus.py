"""The adversarial screening corpus (bot/data/screening_corpus.tsv) through the real prompt
policy: every harmful prompt refused, every benign near-miss passed except the known false
positives listed here (kept in the corpus and reported in docs/safety.md, never deleted), and
the table of docs/safety.md equal to what the report prints now."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from bot.services.prompt_policy import PromptPolicy
from bot.services.screening_corpus import CorpusPrompt, load_corpus, parse_corpus
from bot.services.screening_report import measure, refuses, report_markdown

CORPUS = load_corpus()
POLICY = PromptPolicy.base()
# Benign prompts the lists refuse today. Excepting "nude" as a colour would let "wearing only
# nude lipstick" through; the cost is named in docs/safety.md.
KNOWN_FALSE_POSITIVES = {"a nude lipstick on a table", "nude-coloured heels"}
DOC = Path(__file__).resolve().parents[2] / "docs" / "safety.md"


def test_the_corpus_is_large_and_covers_every_evasion_class() -> None:
    assert len(CORPUS) >= 300
    categories = Counter(item.category for item in CORPUS)
    for needed in (
        "sexual-confusables",
        "sexual-marks",
        "sexual-split",
        "sexual-euphemism",
        "minors-spelled-age",
        "minors-grade",
        "minors-euphemism",
        "always",
        "benign-animals",
        "benign-colours",
        "benign-places",
        "benign-art",
    ):
        assert categories[needed] >= 5, needed
    languages = {c for c in categories if c.startswith("sexual-lang-")}
    assert len(languages) >= 11  # ten languages and more, each its own category
    minors = [i for i in CORPUS if i.category.startswith("minors-")]
    assert all(not i.person and i.age_restricted for i in minors)  # the permissive case


def test_the_corpus_covers_the_negative_prompt_inversion() -> None:
    categories = Counter(item.category for item in CORPUS)
    assert categories["sexual-negative"] >= 20
    assert categories["minors-negative"] >= 8
    assert categories["benign-negative"] >= 15
    inverted = [i for i in CORPUS if i.category in ("sexual-negative", "minors-negative")]
    assert all(i.negative for i in inverted)
    sexual = [i for i in inverted if i.category == "sexual-negative"]
    assert all(i.person for i in sexual)
    assert {i.channel for i in sexual} == {"normal", "age-restricted"}
    assert all(not i.person for i in inverted if i.category == "minors-negative")
    benign = [i for i in CORPUS if i.category == "benign-negative"]
    assert {i.avatar for i in benign} == {"person", "pet", "object"}
    # Each is refused by its negative: the same line without it passes.
    for item in inverted:
        assert not refuses(POLICY, replace(item, negative="")), item.prompt


@pytest.mark.parametrize(
    "item",
    [i for i in CORPUS if i.expect == "refuse"],
    ids=lambda i: f"{i.category}:{i.prompt[:30]}",
)
def test_harmful_prompts_are_refused(item: CorpusPrompt) -> None:
    assert refuses(POLICY, item), f"{item.category} passed: {item.prompt!r}"


def test_benign_near_misses_pass_but_the_known_false_positives() -> None:
    result = measure(CORPUS, POLICY)
    assert result.missed == ()
    assert {i.prompt for i in result.false_positives} == KNOWN_FALSE_POSITIVES


def test_the_docs_table_is_the_current_report() -> None:
    text = DOC.read_text("utf-8")
    found = re.search(r"<!-- screening-report -->\n(.*?)<!-- /screening-report -->", text, re.S)
    assert found, "docs/safety.md lost its screening-report markers"
    assert found.group(1) == report_markdown(measure(CORPUS, POLICY)), (
        "docs/safety.md is stale: paste `python -m scripts.screening_report` between the markers"
    )


@pytest.mark.parametrize(
    "bad",
    [
        "sexual\trefuse\tperson\tnormal",  # four fields
        "sexual\tmaybe\tperson\tnormal\tx",
        "sexual\trefuse\tdragon\tnormal\tx",
        "sexual\trefuse\tperson\tlounge\tx",
        "benign-x\trefuse\tperson\tnormal\tx",  # benign must pass
        "sexual\trefuse\tperson\tnormal\t ",
        "sexual\trefuse\tperson\tnormal\tx\tclothes\textra",  # seven fields
    ],
)
def test_corpus_format_errors_name_the_line(bad: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_corpus(f"# header\n{bad}\n")
    assert parse_corpus("# c\n\nx\trefuse\tpet\tnormal\tsome prompt\n")[0].prompt == "some prompt"


def test_the_sixth_field_is_the_negative_prompt() -> None:
    [plain, negative, empty] = parse_corpus(
        "x\trefuse\tperson\tnormal\tme on a beach\n"
        "x\trefuse\tperson\tnormal\tme on a beach\t clothes, shirt \n"
        "x\trefuse\tperson\tnormal\tme on a beach\t\n"
    )
    assert (plain.negative, negative.negative, empty.negative) == ("", "clothes, shirt", "")
    # The report checks the negative as the bot does: only the line with one is refused.
    assert [refuses(POLICY, i) for i in (plain, negative, empty)] == [False, True, False]
