"""Print the screening corpus's refusal rates per category (the table of docs/safety.md).

python -m scripts.screening_report
"""

from __future__ import annotations

import sys

from bot.services.screening_report import measure, report_markdown


def main() -> int:
    try:
        sys.stdout.write(report_markdown(measure()))
    except (OSError, ValueError) as exc:
        print(f"screening_report: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
