"""The repository documents itself: nothing it ships points at a file outside it.

A maintainer who clones the repository must be able to read every document its code and docs
cite. So no tracked file cites the old out-of-tree notes (design map, notes, style guide) or a
sibling folder, every relative link in README.md and docs/*.md resolves to a file inside the
repository (and, for a Markdown target, to one of its headings), and every
``docs/<page>.md#<section>`` a comment cites names a heading that exists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = (
    "bot",
    "engine",
    "db",
    "kinds",
    "migrations",
    "bench",
    "research",
    "tests",
    "docs",
    "README.md",
)

# Spelled in pieces so that this file does not match its own patterns.
OUTSIDE_CITATIONS = re.compile(
    r"\b(?:" + "DESIGN" + r"|" + "NOTES" + r"|" + "STYLE" + r")\.md\b|\.\./" + "shared"
)
# [text](target): the target up to whitespace or ')'; images too ("![alt](target)").
MARKDOWN_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
# A citation of a documentation section from code or prose: docs/page.md#anchor.
SECTION_CITATION = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)#([A-Za-z0-9_-]+)")


def _repository_files() -> list[Path]:
    """The tracked files under ``SCANNED``; without git (an exported tree), every file there."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", *SCANNED],
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return [
            path
            for name in SCANNED
            for path in ([ROOT / name] if (ROOT / name).is_file() else (ROOT / name).rglob("*"))
            if path.is_file()
            and not any(
                part.startswith(".") or part == "__pycache__"
                for part in path.relative_to(ROOT).parts
            )
        ]
    return [ROOT / name for name in listed.split("\0") if name]


def _tracked_text_files() -> list[Path]:
    files = []
    for path in _repository_files():
        if not path.is_file():
            continue  # deleted in the working tree, not yet committed
        if b"\0" in path.read_bytes()[:8192]:
            continue  # binary (images, weights)
        files.append(path)
    return files


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _outside_fences(text: str) -> str:
    """The text with fenced code blocks blanked (links in code samples are not links)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            kept.append("")
            continue
        kept.append("" if fenced else line)
    return "\n".join(kept)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces → '-'."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _outside_fences(markdown).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        title = re.sub(r"`", "", match.group(1)).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _link_problem(page: Path, target: str) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return None  # http:, https:, mailto: ... are not repository paths
    path_part, _, anchor = target.partition("#")
    resolved = (page.parent / path_part).resolve() if path_part else page
    if not resolved.is_relative_to(ROOT):
        return f"{target} leaves the repository"
    if not resolved.exists():
        return f"{target} does not exist"
    if anchor and resolved.suffix == ".md" and anchor not in heading_anchors(_read(resolved)):
        return f"{target}: {resolved.name} has no heading #{anchor}"
    return None


def test_no_file_cites_notes_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _tracked_text_files()
        if path != Path(__file__).resolve()
        for number, line in enumerate(_read(path).splitlines(), start=1)
        if OUTSIDE_CITATIONS.search(line)
    ]
    assert not offenders, "cite docs/architecture.md instead of:\n" + "\n".join(offenders)


@pytest.mark.parametrize("page", _markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    problems = [
        f"{page.relative_to(ROOT)}: {problem}"
        for target in MARKDOWN_LINK.findall(_outside_fences(_read(page)))
        if (problem := _link_problem(page, target)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_cited_documentation_sections_exist() -> None:
    cited = [
        (path, page, anchor)
        for path in _tracked_text_files()
        if path != Path(__file__).resolve()  # its own examples are made up
        for page, anchor in SECTION_CITATION.findall(_read(path))
    ]
    assert any(page == "architecture.md" for _, page, _ in cited), (
        "the code cites no section of docs/architecture.md"
    )
    problems = [
        f"{path.relative_to(ROOT)} cites docs/{page}#{anchor}, which does not exist"
        for path, page, anchor in cited
        if not (ROOT / "docs" / page).is_file()
        or anchor not in heading_anchors(_read(ROOT / "docs" / page))
    ]
    assert not problems, "\n".join(problems)


def test_readme_links_the_architecture_page() -> None:
    targets = MARKDOWN_LINK.findall(_outside_fences(_read(ROOT / "README.md")))
    assert "docs/architecture.md" in [t.partition("#")[0] for t in targets]


# The checks above must be able to fail: hostile and broken inputs, checked directly.
def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    assert OUTSIDE_CITATIONS.search("see (" + "DESIGN" + ".md, Jobs)")
    assert OUTSIDE_CITATIONS.search("as ../" + "shared/notes say")
    assert not OUTSIDE_CITATIONS.search("see docs/architecture.md#the-job-runtime")
    readme = ROOT / "README.md"
    assert _link_problem(readme, "../outside.md") == "../outside.md leaves the repository"
    assert _link_problem(readme, "docs/missing.md") == "docs/missing.md does not exist"
    assert _link_problem(readme, "docs/safety.md#no-such-heading") is not None
    assert _link_problem(readme, "https://example.org/x") is None
    page = "# Top\n## The job runtime: one loop (issue 22)\n```\n# not a heading\n```\n## Top\n"
    assert heading_anchors(page) == {"top", "the-job-runtime-one-loop-issue-22", "top-1"}
    assert MARKDOWN_LINK.findall('[a](x.md) ![b](img/y.png) [c](<z.md> "t")') == [
        "x.md",
        "img/y.png",
        "z.md",
    ]


def test_an_exported_tree_without_git_is_scanned_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args: object, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    names = {str(p.relative_to(ROOT)) for p in _repository_files()}
    assert {"README.md", "docs/architecture.md", "tests/test_docs.py"} <= names
    assert not any("__pycache__" in name for name in names)
