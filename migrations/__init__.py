"""Alembic migrations, shipped with the package so `avatarbot db upgrade` works anywhere."""
