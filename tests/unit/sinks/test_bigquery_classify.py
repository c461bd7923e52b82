"""How BigQuery client errors are sorted into transient and terminal."""

from __future__ import annotations

from google.api_core import exceptions as g

from pulse.errors import TerminalError, TransientError
from pulse.sinks.bigquery.client import classify


def test_a_job_that_vanished_while_polled_is_transient() -> None:
    # What the client raised when the emulator restarted while Pulse polled a MERGE (the chaos soak).
    exc = g.NotFound("GET http://127.0.0.1:19050/bigquery/v2/projects/p/queries/abc?maxResults=0: Not found: job")
    assert isinstance(classify(exc, "merge"), TransientError)


def test_an_upload_session_that_vanished_is_transient() -> None:
    # What the client raised when the emulator restarted during a resumable load upload (the
    # 60-minute in-process soak: `pulse run` exited twice on it before the fix).
    exc = g.NotFound("PUT http://127.0.0.1:37119/upload/bigquery/v2/projects/pulse-local/jobs?uploadType=resumable"
                     "&upload_id=fdc8b5d1b6ba4865a976968941b957b2: Upload session fdc8b5d1b6ba4865a976968941b957b2 "
                     "not found")
    assert isinstance(classify(exc, "load job"), TransientError)


def test_a_missing_table_or_dataset_stays_terminal() -> None:
    exc = g.NotFound("POST https://bigquery.googleapis.com/bigquery/v2/projects/p/datasets/d/tables: "
                     "Not found: Dataset p:d")
    out = classify(exc, "load")
    assert isinstance(out, TerminalError) and out.hint



def test_the_client_neither_retries_a_call_nor_reruns_a_job_for_longer_than_the_request_timeout() -> None:
    """google-cloud-bigquery re-runs a failed query job for up to 40 minutes by default (`job_retry`),
    and while job_retry is set retries the job's insert for 10 minutes, connection errors included:
    the loader sat in one query for the whole of an emulator outage and never reported it."""
    from types import SimpleNamespace

    from pulse.config import BigQueryConfig
    from pulse.sinks.bigquery.client import Tables

    seen = {}

    class Job:
        total_bytes_billed = 0

        def result(self, **kw):
            seen["result"] = kw
            return []

    def query(sql, **kw):
        seen["query"] = kw
        return Job()

    tables = Tables(SimpleNamespace(project="p", query=query), BigQueryConfig(request_timeout_s=20))
    tables.query("SELECT 1", "a test")
    for call in ("query", "result"):
        assert "job_retry" in seen[call] and seen[call]["job_retry"] is None, call
        assert seen[call]["retry"].deadline == 20, call


def test_a_job_failure_the_client_would_have_rerun_is_transient() -> None:
    # Without the client's job_retry these reach Pulse; its loader's backoff runs the step again.
    for exc in (g.Forbidden("Exceeded rate limits: too many table update operations",
                            errors=[{"reason": "jobRateLimitExceeded"}]),
                g.BadRequest("Job failed", errors=[{"reason": "jobBackendError"}]),
                g.InternalServerError("backend", errors=[{"reason": "backendError"}])):
        assert isinstance(classify(exc, "merge"), TransientError), exc
    assert isinstance(classify(g.BadRequest("Syntax error", errors=[{"reason": "invalidQuery"}]), "merge"),
                      TerminalError)
