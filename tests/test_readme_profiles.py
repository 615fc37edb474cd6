"""README.md lists every engine profile (issue 24: it named 8 of 10): its table between the
``profiles`` markers is ``python -m scripts.profile_table``, generated from engine/profiles.py."""

from __future__ import annotations

import re
from pathlib import Path

from engine.profiles import known_profiles
from scripts.profile_table import profile_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_profile_table_is_current() -> None:
    text = README.read_text("utf-8")
    found = re.search(r"<!-- profiles -->\n(.*?)<!-- /profiles -->", text, re.S)
    assert found, "README.md lost its profiles markers"
    assert found.group(1) == profile_table(), (
        "README.md's profile table is stale: paste `python -m scripts.profile_table` between "
        "the markers"
    )


def test_the_table_names_every_registered_profile() -> None:
    table = profile_table()
    assert len(known_profiles()) >= 10
    for name in known_profiles():
        assert f"| `{name}` |" in table
