"""Subcommands of the ``cope`` CLI, one module each."""
