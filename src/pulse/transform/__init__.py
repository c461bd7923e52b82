"""Pulse transform."""
