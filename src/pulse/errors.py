"""Pulse's error kinds.

One root (`PulseError`), sorted into two kinds the runtime acts on:
`TransientError` (retry with backoff: a service is down, a timeout) and
`TerminalError` (stop and tell the operator what to do). Every terminal error
carries a `hint`: the action that fixes it.
"""

from __future__ import annotations


class PulseError(Exception):
    """Root of every error Pulse raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.hint})" if self.hint else self.message


class TransientError(PulseError):
    """Worth retrying: the cause is expected to go away (network, restart, quota)."""


class TerminalError(PulseError):
    """Retrying will not help; the operator must act (see `hint`)."""


class ConfigError(TerminalError):
    """Bad or missing configuration, detected at start."""


class SlotLostError(TerminalError):
    """The replication slot was invalidated or dropped: changes may have been missed."""


class ServiceError(TerminalError):
    """A local development service could not be installed or started."""
