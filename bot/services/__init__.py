"""Use cases and rules of the product: no discord, no torch
(docs/architecture.md#the-layering-rules)."""
