"""Pulse bus."""
