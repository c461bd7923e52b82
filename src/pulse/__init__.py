"""Pulse: stream engagement events out of PostgreSQL to BigQuery, Redis and an external HTTP system."""

__version__ = "0.1.0"
