"""Alembic migrations, shipped with the package so `avatarbot db upgrade` works anywhere.

The app and the CLI configure Alembic in code (db/migrate.py). Maintainers writing a new
revision use the plain tool with ``migrations/alembic.ini`` (instructions at its top).
"""
