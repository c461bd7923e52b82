"""`pulse generate` (placeholder until the generator lands)."""

import typer


def generate() -> None:
    """Write engagement events."""
    raise typer.Exit(1)
