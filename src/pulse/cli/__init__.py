"""Pulse cli."""
