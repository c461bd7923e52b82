"""Pulse: stream engagement events out of PostgreSQL to BigQuery, Redis and an external HTTP system."""

# The one place the version is written: pyproject.toml reads it (`dynamic`), `pulse --version` prints it.
__version__ = "0.1.0"
