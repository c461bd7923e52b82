"""Fixtures of the generator's pure tests (no services)."""

from __future__ import annotations

import pytest

from ._build import history


@pytest.fixture(scope="module")
def plain_run():
    """A bulk run of 20,000 events without anomalies: (events, None, catalogue)."""
    return history()
