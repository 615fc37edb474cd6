"""One package per feature: ``__init__`` (setup), ``cog.py`` (commands), ``views.py`` (UI)."""
