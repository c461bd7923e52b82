"""How BigQuery client errors are sorted into transient and terminal."""

from __future__ import annotations

from google.api_core import exceptions as g

from pulse.errors import TerminalError, TransientError
from pulse.sinks.bigquery_load import classify


def test_a_job_that_vanished_while_polled_is_transient() -> None:
    # What the client raised when the emulator restarted while Pulse polled a MERGE (the chaos soak).
    exc = g.NotFound("GET http://127.0.0.1:19050/bigquery/v2/projects/p/queries/abc?maxResults=0: Not found: job")
    assert isinstance(classify(exc, "merge"), TransientError)


def test_a_missing_table_or_dataset_stays_terminal() -> None:
    exc = g.NotFound("POST https://bigquery.googleapis.com/bigquery/v2/projects/p/datasets/d/tables: "
                     "Not found: Dataset p:d")
    out = classify(exc, "load")
    assert isinstance(out, TerminalError) and out.hint
