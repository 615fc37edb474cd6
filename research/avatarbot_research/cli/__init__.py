"""The bodies of `avatarbot eval` and `avatarbot train`; bot.cli registers both commands and
imports these only when one runs (bot/cli/research.py)."""
