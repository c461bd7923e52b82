"""Sinks: one contract (`Sink`), destinations and test doubles, built by name.

A sink's client library is imported only when that sink is built, with an
error naming the extra to install.
"""

from __future__ import annotations

from pulse.config import Settings
from pulse.errors import ConfigError
from pulse.sinks.base import Sink

BUILTIN = ("memory", "pgtable")


def build_sink(name: str, settings: Settings) -> Sink:
    """The sink called `name`, configured from `settings`."""
    if name == "memory":
        from pulse.sinks.memory import MemorySink

        return MemorySink(keep=False)
    if name == "pgtable":
        from pulse.sinks.pgtable import PgTableSink

        url = settings.testsinks.pgtable_url
        if url is None:
            raise ConfigError("the pgtable sink needs a database URL",
                              hint="set PULSE_TESTSINKS__PGTABLE_URL (a database other than the source)")
        return PgTableSink(url.get_secret_value(), table=settings.testsinks.pgtable_table)
    raise ConfigError(f"unknown sink {name!r}", hint=f"choose from: {', '.join(BUILTIN)}")


__all__ = ["BUILTIN", "Sink", "build_sink"]
