"""Pulse sinks."""
