"""Pulse dev."""
