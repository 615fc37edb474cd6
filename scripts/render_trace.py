"""Trace one `/avatar render` for real: every function of bot/, engine/, db/ and kinds/ that the
render's SimCord test calls, in the order first called, grouped by file.

    python -m scripts.render_trace            # the list, then the count of files
    python -m scripts.render_trace --files    # files only, in order

It runs ``tests/bot/test_render.py::test_render_posts_a_gallery_with_its_facts_and_buttons`` (embedded
on SQLite, the tiny engine) under a profiler on every thread, and leaves out what runs before
the command is sent (bot start, the avatar's creation) and after the images are posted (the
bot's shutdown): the trace starts at ``render_command`` and ends at ``mark_delivered``.
docs/architecture.md ("A render's path") is written from its output.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
PACKAGES = tuple(str(REPO / name) + "/" for name in ("bot", "engine", "db", "kinds"))
TEST = "tests/bot/test_render.py::test_render_posts_a_gallery_with_its_facts_and_buttons"
START, END = "render_command", "mark_delivered"


class Trace:
    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], None] = {}  # insertion-ordered set
        self.recording = False
        self.done = False
        self._lock = threading.Lock()

    def profile(self, frame: FrameType, event: str, arg: object) -> None:
        if event != "call" or self.done:
            return
        path = frame.f_code.co_filename
        if not path.startswith(PACKAGES):
            return
        name = frame.f_code.co_qualname
        with self._lock:
            if name == START:
                self.recording = True
            if self.recording:
                self.calls.setdefault((str(Path(path).relative_to(REPO)), name), None)
            if self.recording and name.endswith(END):
                self.done = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", action="store_true", help="the files only, in order")
    args = parser.parse_args(argv)
    import pytest

    trace = Trace()
    threading.setprofile(trace.profile)
    sys.setprofile(trace.profile)
    try:
        status = pytest.main(["-q", "-p", "no:randomly", "-p", "no:cacheprovider", TEST])
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    if status != 0 or not trace.done:
        print(f"render_trace: the test did not pass or never reached {END}", file=sys.stderr)
        return 1
    files: dict[str, list[str]] = {}
    for path, name in trace.calls:
        files.setdefault(path, []).append(name)
    print()
    for path, names in files.items():
        print(path if args.files else f"{path}: {', '.join(names)}")
    print(f"\n{len(files)} files, {len(trace.calls)} functions, from {START} to {END}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
