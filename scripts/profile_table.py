"""Print README.md's table of engine profiles, from engine/profiles.py (every registered
profile, plug-ins' included); tests/test_readme_profiles.py keeps the README's copy current.

python -m scripts.profile_table
"""

from __future__ import annotations

import sys

from engine.profiles import get_profile, known_profiles


def profile_table() -> str:
    """The Markdown table: name, weights (real, or random: noise), description."""
    lines = ["| Profile | Weights | What it is |", "| --- | --- | --- |"]
    for name in known_profiles():
        profile = get_profile(name)
        weights = "random: renders noise" if profile.is_noise else "real"
        description = profile.description.replace("|", "\\|")
        lines.append(f"| `{name}` | {weights} | {description} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(profile_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
