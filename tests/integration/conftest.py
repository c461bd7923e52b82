"""Fixtures shared by the integration tests (pytest finds them here; no test imports another)."""

from __future__ import annotations

import pytest

from pulse.config import BigQueryConfig
from pulse.receiver import Receiver

from ..conftest import need, unique
from .bigquery_helpers import ensure_emulator_running
from .external_helpers import SECRET
from .kafka_helpers import drop_topics
from .pipeline_helpers import pulse_env


@pytest.fixture
def bq(services):
    """(client, dataset name): a fresh dataset on the emulator, deleted afterwards."""
    need("PULSE_BIGQUERY_ENDPOINT" in services, "the BigQuery emulator")
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(project=services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"),
                             credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=services["PULSE_BIGQUERY_ENDPOINT"]))
    dataset = unique("pulse_bq")
    yield client, dataset
    ensure_emulator_running()
    client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    client.close()


@pytest.fixture
def receiver():
    rec = Receiver(secret=SECRET, seed=11).start()
    try:
        yield rec
    finally:
        rec.stop()


@pytest.fixture
def kafka_env(scratch_db, sink_db, services):
    topic = unique("pulse_t")
    env = pulse_env(
        scratch_db,
        PULSE_KAFKA_BOOTSTRAP=services["PULSE_KAFKA_BOOTSTRAP"],
        PULSE_KAFKA__TOPIC=topic,
        PULSE_KAFKA__CONTENT_TOPIC=topic + "_content",
        PULSE_KAFKA__PARTITIONS="4",
        PULSE_KAFKA__GROUP_PREFIX=unique("grp"),
        PULSE_TESTSINKS__PGTABLE_URL=sink_db,
    )
    yield env
    drop_topics(services["PULSE_KAFKA_BOOTSTRAP"], [topic, topic + "_content"])


@pytest.fixture
def bq_dataset(services):
    from pulse.sinks.bigquery.client import make_client

    dataset = unique("pulse_kafka")
    cfg = BigQueryConfig(project=services["PULSE_BIGQUERY_PROJECT"], dataset=dataset,
                         endpoint=services["PULSE_BIGQUERY_ENDPOINT"])
    client = make_client(cfg)
    yield dataset, client
    client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


@pytest.fixture
def rprefix(services):
    import redis

    prefix = unique("pulse_t") + ":"
    client = redis.Redis.from_url(services["PULSE_REDIS_URL"])
    try:
        yield prefix, client
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
        client.close()
