"""Repository helpers beside ``db.models``: the queries the services run, one module per table
group. Every function takes an ``AsyncSession`` inside a transaction the caller owns, takes and
returns plain values or ORM rows (the services turn rows into their own dataclasses), and never
commits. Each storage module implements ``delete_user_data(session, user_id)``, the privacy
contract behind forget-me (docs/architecture.md#data-and-privacy).
"""
