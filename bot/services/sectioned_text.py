"""One reader for the data files written as ``[section]`` headers, each followed by one entry
a line: bot/data/prompt_blocklist.txt (the word lists) and bot/data/semantic_concepts.txt (the
semantic screen's concepts). Each file's own parser adds its checks on the entries."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_HEADER = re.compile(r"\[(\w+)\]")


def read_sections(
    text: str,
    names: Iterable[str],
    *,
    item: str = "entry",
    strip_comment: Callable[[str], str] | None = None,
) -> dict[str, list[tuple[int, str]]]:
    """The entries of each section in ``names``, in file order, with their line numbers.

    Lines are trimmed; blank lines and lines starting with ``#`` are skipped; a line is first
    passed through ``strip_comment`` when given (the word lists allow a trailing comment).
    Raises ``ValueError`` naming the line of an unknown section or of an ``item`` before any
    section."""
    sections: dict[str, list[tuple[int, str]]] = {name: [] for name in names}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if strip_comment is not None:
            line = strip_comment(line)
        if not line or line.startswith("#"):
            continue
        header = _HEADER.fullmatch(line)
        if header:
            current = header.group(1)
            if current not in sections:
                raise ValueError(f"line {number}: unknown section [{current}]")
            continue
        if current is None:
            raise ValueError(f"line {number}: {item} before any [section]")
        sections[current].append((number, line))
    return sections


__all__ = ["read_sections"]
