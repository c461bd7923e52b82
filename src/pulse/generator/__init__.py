"""Pulse generator."""
