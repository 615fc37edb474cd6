"""Persistence: ORM models, the async session factory, repositories, the queue claim."""
