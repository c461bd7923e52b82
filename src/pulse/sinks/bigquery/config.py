"""The BigQuery sink's settings (`[bigquery]`, `PULSE_BIGQUERY__*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pulse.config_base import Section


class BigQueryConfig(Section):
    """The BigQuery destination."""

    project: str = Field(default="pulse-local", description="GCP project id (PULSE_BIGQUERY_PROJECT).")
    dataset: str = Field(default="pulse", description="Dataset (PULSE_BIGQUERY_DATASET).")
    table: str = Field(default="engagement_events", description="Table of enriched events.")
    location: str | None = Field(default=None, description="Dataset location, e.g. EU; unset: BigQuery's default.")
    endpoint: str | None = Field(
        default=None, description="REST endpoint of an emulator (PULSE_BIGQUERY_ENDPOINT); unset means Google."
    )
    grpc_endpoint: str | None = Field(
        default=None, description="host:port of an emulator's Storage Write API; unset means Google."
    )
    credentials_file: Path | None = Field(
        default=None, description="Service-account JSON file; unset: application default credentials."
    )
    mode: Literal["batch", "stream"] = Field(default="batch", description="Load jobs (batch) or Storage Write API.")
    spool_dir: Path | None = Field(
        default=None,
        description="Folder of Parquet files awaiting load. Unset: bigquery_batches/<project>.<dataset>.<table>/"
        "<slot> under the working directory for `pulse run`, .../<consumer group>/<topic>_<partition> for "
        "`pulse consume`, so two pipelines never share one. The folder records its owner (owner.json) and "
        "refuses to open for another table, slot, topic or group.",
    )
    write_linger_s: float = Field(
        default=1.0, ge=0, le=60,
        description="Batch mode, `pulse run`: seconds the sink gathers events (up to runtime.batch_max_events) "
        "into one spool file before writing it. A file per transaction under a trickle of small transactions "
        "made tens of thousands of files that every load had to combine; rows are loaded every "
        "load_interval_s anyway. 0: a file per write.",
    )
    load_interval_s: float = Field(
        default=60.0, ge=0.2, description="Seconds between load jobs (BigQuery allows 1,500 per table per day; "
        "load_jobs_per_day paces them further when they go faster)."
    )
    backfill_load_interval_s: float = Field(
        default=0.5, ge=0.2,
        description="While a backfill is being spooled (and for 30 s after its last chunk), seconds between "
        "load jobs instead of load_interval_s, so that a backfill does not wait a minute per load. Each load "
        "takes everything spooled, so a long backfill makes about one load job per load job's duration "
        "(never beyond load_jobs_per_day).",
    )
    load_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024,
        description="Load earlier than load_interval_s once the spool holds this many bytes; also the most "
        "Parquet bytes one load job takes, and the memory in which the process keeps the tables it just "
        "spooled for the loader (one budget for every BigQuery sink of the process: `pulse consume` has one "
        "per partition).",
    )
    load_max_files: int = Field(
        default=5_000, ge=1,
        description="Most spool files one load job takes. Each file is read and combined into the upload: "
        "an unbounded group of tiny files took minutes to combine, long enough for a restart to lose the "
        "work and start over (the chaos soak's loader never caught up).",
    )
    direct_load: bool = Field(
        default=True,
        description="Batch mode: load a group of fresh inserts (no id of it in the table yet) straight into the "
        "table, skipping the staging table and the MERGE; false always MERGEs.",
    )
    upload_in_process: bool = Field(
        default=True,
        description="Batch mode: run the loader inside the sink (`pulse run`); false when a separate "
        "`pulse upload` worker drains the spool.",
    )
    merge_interval_s: float = Field(
        default=10.0, ge=0.2,
        description="Stream mode: seconds between MERGEs of the changelog table into the table.",
    )
    changelog_retention_days: int = Field(
        default=7, ge=1, description="Stream mode: days the changelog table's partitions are kept."
    )
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="Deadline of one BigQuery request or job wait, retries included."
    )
    maximum_bytes_billed: int | None = Field(
        default=1024**4, ge=100 * 1024**2,
        description="Every query job Pulse runs carries this maximumBytesBilled (bytes): BigQuery refuses to "
        "run a query that would bill more, and Pulse stops with an error naming the query (the spool keeps "
        "the rows). Default 1 TiB; unset: no limit. Load jobs bill no bytes (docs/sinks/bigquery.md, "
        "\"Cost model\").",
    )
    load_jobs_per_day: int = Field(
        default=1400, ge=1,
        description="Batch mode: most jobs that write the table (direct loads and MERGEs) in any 24 hours, paced "
        "by the state table. The loader may spend a fifth of it at once, the rest evenly over the day "
        "(widening the interval between loads), and never more (BigQuery allows 1,500 table operations "
        "per table per day).",
    )
    max_row_bytes: int | None = Field(
        default=None, ge=1024,
        description="Largest raw_payload written as is; a larger event is written with its raw_payload replaced "
        "by a marker and the problem payload_too_large, its full form kept in the dead-letter store "
        "(`pulse dlq --sink bigquery`). Unset: 9 MiB in stream mode (a Storage Write request carries at most "
        "10 MB), 99 MiB in batch mode (a load job's row is at most 100 MB).",
    )


__all__ = ["BigQueryConfig"]
