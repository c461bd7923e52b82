"""Pulse's error kinds.

One root (`PulseError`), sorted into two kinds the runtime acts on:
`TransientError` (retry with backoff: a service is down, a timeout) and
`TerminalError` (stop and tell the operator what to do). Every terminal error
carries a `hint`: the action that fixes it.

Each kind declares the exit code the `pulse` command ends with when such an
error reaches it (the table is in `pulse.cli.main` and docs/operations.md).
"""

from __future__ import annotations


class PulseError(Exception):
    """Root of every error Pulse raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.hint})" if self.hint else self.message


class TransientError(PulseError):
    """Worth retrying: the cause is expected to go away (network, restart, quota).

    One that reaches the command line means a dependency stayed unreachable
    after the retries the caller allowed.
    """

    exit_code = 4


class TerminalError(PulseError):
    """Retrying will not help; the operator must act (see `hint`): bad data, a lost slot, a refusal."""

    exit_code = 5


class ConfigError(TerminalError):
    """Bad or missing configuration, detected at start."""

    exit_code = 3


class SlotLostError(TerminalError):
    """The replication slot was invalidated or dropped: changes may have been missed."""


class ServiceError(TerminalError):
    """A local development service could not be installed or started."""
