"""Decisions without I/O: tiers, models, prices and rules."""
