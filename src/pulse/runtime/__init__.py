"""Pulse runtime."""
