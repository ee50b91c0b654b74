"""Shared kernel of Ladder: the messages every process exchanges, settings, and the `ladder` command."""
