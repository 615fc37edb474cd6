"""Use cases and rules of the product: no discord, no torch (see DESIGN.md)."""
