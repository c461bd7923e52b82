"""The external HTTP sink against a real `pulse receiver` over loopback, on its local outbox (the default)
and on the PostgreSQL outbox (`outbox = "postgres"`)."""

from __future__ import annotations

import random
import signal
import subprocess
import threading

from pathlib import Path

import psycopg2
import pytest
from typer.testing import CliRunner

from pulse.config import Settings
from pulse.model import Position
from pulse.receiver import Receiver
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.external.sink import ExternalSink, outbox_folder
from pulse.sinks.external.local import read_state
from pulse.sinks.external.stream import pending_after
from pulse.source.slot import ensure_slot
from tests.factories import make_event

from .pipeline_helpers import Running, insert_content, insert_events, insert_events_bulk, kill_at_random, wait_for
from .external_helpers import SECRET, outbox_for, outbox_rows, received_by_event, settings, source_ids
from .pipeline_helpers import pulse_cmd, pulse_env, reported_pid


def local_pending(db, name: str = "external") -> int:
    """Events in the local outbox above its stored delivered position (as a restart would see them)."""
    folder = outbox_folder(Settings().external, db.config(), name)
    return pending_after(folder, read_state(folder).delivered)


def waiting(db, cur, outbox: str) -> int:
    return outbox_rows(cur) if outbox == "postgres" else local_pending(db)


def assert_per_content_order(rec: Receiver) -> None:
    """First arrivals of each content id come in source position order (checked apart from the receiver's count)."""
    last: dict[str, tuple[int, int]] = {}
    for item in rec.events():
        data = item["event"]["data"]
        key = data["content_id"] or ""
        pos = (data["source_lsn"], data["source_seq"])
        assert pos > last.get(key, (0, 0)), f"content {key}: {pos} arrived after {last[key]}"
        last[key] = pos
    assert rec.stats()["order_violations"] == 0


def test_every_event_of_a_generator_run_arrives_despite_30_percent_mixed_failures(scratch_db, receiver):
    receiver.set_faults(error_500=0.08, error_429=0.05, error_503=0.05, timeout=0.06, reset=0.06,
                        retry_after_s=0, timeout_s=2.0)
    conn = scratch_db.connect()
    cur = conn.cursor()
    sink = ExternalSink.from_settings(settings(scratch_db, receiver, batch_max_events=60, concurrency=4,
                                               breaker_failures=1000, max_attempts=10_000))
    env = pulse_env(scratch_db)
    with Running(Pipeline(settings(scratch_db, receiver), [sink])):
        gen = subprocess.run(pulse_cmd("generate", "--count", "3000", "--since", "2024-08-01T00:00:00",
                                       "--until", "2024-08-02T00:00:00", "--seed", "5", "--content", "40",
                                       "--chunk-rows", "500"),
                             env=env, capture_output=True, text=True, timeout=120)
        assert gen.returncode == 0, gen.stderr[-2000:]
        expected = source_ids(cur)
        assert len(expected) == 3000
        wait_for(lambda: expected <= set(received_by_event(receiver)), 90, "every generated event at the receiver",
                 interval=0.25)
        wait_for(lambda: local_pending(scratch_db) == 0, 30, "an empty outbox")
    assert outbox_rows(cur) == 0  # nothing went through the database

    stats = receiver.stats()
    by_event = received_by_event(receiver)
    assert set(by_event) == expected
    assert all(len(ids) == 1 for ids in by_event.values()), "an event arrived under two different ids"
    assert stats["conflicts"] == 0, stats["conflicting_ids"]
    assert stats["signature_failures"] == 0 and stats["signature_ok"] > 0
    # Every kind of failure was really served (and so survived), and accepted-then-lost requests were re-sent.
    assert set(stats["faults_served"]) == {"500", "429", "503", "timeout", "reset"}, stats["faults_served"]
    failed = sum(stats["faults_served"].values())
    assert failed / stats["requests"] > 0.2, stats
    assert stats["duplicates"] > 0
    assert_per_content_order(receiver)


@pytest.mark.parametrize("outbox", ["local", "postgres"])
def test_a_dead_endpoint_does_not_hold_the_slot_and_everything_arrives_when_it_is_back(scratch_db, receiver, outbox):
    conn = scratch_db.connect()
    cur = conn.cursor()
    receiver.stop()  # connection refused from the start
    sink = ExternalSink.from_settings(settings(scratch_db, receiver, concurrency=2, outbox=outbox))
    with Running(Pipeline(settings(scratch_db, receiver), [sink])):
        content = insert_content(cur, 5)
        for i in range(5):
            insert_events_bulk(cur, content, i * 200, 200)
        cur.execute("SELECT pg_current_wal_lsn()")
        written_to = cur.fetchone()[0]

        def slot_past_writes() -> bool:
            cur.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                        (written_to, scratch_db.slot))
            row = cur.fetchone()
            return bool(row and row[0])

        wait_for(slot_past_writes, 30, "the slot to advance past the writes while the endpoint is down")
        assert receiver.stats()["requests"] == 0
        assert waiting(scratch_db, cur, outbox) == 1000
        if outbox == "local":
            assert outbox_rows(cur) == 0
            status = sink.status()
            assert status["pending"] == 1000 and status["outbox_bytes"] > 1000 * 500, status
            assert status["oldest_pending_s"] > 0
        wait_for(lambda: sink.breaker.opened >= 1, 10, "the circuit to open")
        state = sink.breaker.state
        assert state in ("open", "half-open")
        # The backlog the status (and pulse_sink_backlog_* metrics, pulse board) reports: all 1000, aging.
        status = sink.status()
        assert status["backlog"] == 1000
        wait_for(lambda: sink.status()["backlog_oldest_s"] > 0.5, 10, "the oldest waiting event to age")

        receiver.start()  # same port
        expected = source_ids(cur)
        wait_for(lambda: set(received_by_event(receiver)) == expected, 30, "all 1000 events after recovery",
                 interval=0.2)
        wait_for(lambda: waiting(scratch_db, cur, outbox) == 0, 10, "an empty outbox")
        if outbox == "local":
            wait_for(lambda: sink.status()["outbox_bytes"] == 0, 10, "delivered segments deleted")
        wait_for(lambda: sink.status()["backlog"] == 0 and sink.status()["backlog_oldest_s"] == 0.0, 10,
                 "the status to report an empty backlog")
    stats = receiver.stats()
    assert stats["conflicts"] == 0 and stats["signature_failures"] == 0
    assert_per_content_order(receiver)


def _dead_letter_metric(sink: str) -> float:
    """pulse_dead_letters_total of `sink`, over every reason, in this process."""
    from pulse.metrics import DEAD_LETTERS

    return sum(s.value for m in DEAD_LETTERS.collect() for s in m.samples
               if s.name == "pulse_dead_letters_total" and s.labels["sink"] == sink)


def test_terminal_4xx_dead_letters_the_batch_and_dlq_replay_delivers_it_with_its_ids(scratch_db, receiver):
    from pulse.cli import dlq

    conn = scratch_db.connect()
    cur = conn.cursor()
    receiver.set_faults(reject_status=422)
    sink = ExternalSink.from_settings(settings(scratch_db, receiver))
    outbox = outbox_for(scratch_db)
    oconn = outbox.connect()
    dead_before = _dead_letter_metric("external")
    with Running(Pipeline(settings(scratch_db, receiver), [sink])):
        content = insert_content(cur, 3)
        refused = insert_events(cur, content, 40)
        wait_for(lambda: outbox.dead_count(oconn) == 40, 30, "40 dead letters")
        assert _dead_letter_metric("external") - dead_before == 40  # pulse_dead_letters_total{sink="external"}
        assert receiver.stats()["unique"] == 0
        wait_for(lambda: local_pending(scratch_db) == 0, 10, "an empty outbox")
        dead = outbox.dead_letters(oconn, 100)
        assert {d["event_id"] for d in dead} == set(refused)
        assert all(d["last_status"] == 422 and "422" in d["last_error"] for d in dead)
        dead_ids = {d["event_id"]: d["ce_id"] for d in dead}

        # The receiver is fixed; new events flow again, and the replay sends the old ones.
        receiver.set_faults(reject_status=None)
        later = insert_events(cur, content, 5)
        wait_for(lambda: set(later) <= set(received_by_event(receiver)), 30, "new events after the fix")

        app = __import__("typer").Typer()
        dlq.register(app)
        env = {"PULSE_DATABASE_URL": scratch_db.url, "PULSE_SLOT": scratch_db.slot,
               "PULSE_EXTERNAL_URL": receiver.url, "PULSE_EXTERNAL_SECRET": SECRET}
        runner = CliRunner()
        listed = runner.invoke(app, ["dlq", "list"], env=env)
        assert listed.exit_code == 0, listed.output
        assert listed.output.startswith("40 dead letter(s)")
        nothing = runner.invoke(app, ["dlq", "replay"], env=env)
        assert nothing.exit_code != 0  # neither --all nor --id: refuses
        replayed = runner.invoke(app, ["dlq", "replay", "--all"], env=env)
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 40 event(s)" in replayed.output
    assert outbox.dead_count(oconn) == 0
    oconn.close()
    by_event = received_by_event(receiver)
    assert set(by_event) == set(refused) | set(later)
    assert {e: ids for e, ids in by_event.items() if e in dead_ids} == {e: {i} for e, i in dead_ids.items()}
    assert receiver.stats()["conflicts"] == 0


def test_dlq_purge_deletes_selected_dead_letters(scratch_db, receiver):
    from pulse.cli import dlq

    conn = scratch_db.connect()
    cur = conn.cursor()
    receiver.set_faults(reject_status=400)
    outbox = outbox_for(scratch_db)
    oconn = outbox.connect()
    sink = ExternalSink.from_settings(settings(scratch_db, receiver, batch_max_events=1))
    with Running(Pipeline(settings(scratch_db, receiver), [sink])):
        content = insert_content(cur, 1)
        insert_events(cur, content, 3)
        wait_for(lambda: outbox.dead_count(oconn) == 3, 30, "3 dead letters")
    first = outbox.dead_letters(oconn, 1)[0]["id"]
    app = __import__("typer").Typer()
    dlq.register(app)
    env = {"PULSE_DATABASE_URL": scratch_db.url, "PULSE_SLOT": scratch_db.slot}
    out = CliRunner().invoke(app, ["dlq", "purge", "--id", str(first), "--yes"], env=env)
    assert out.exit_code == 0 and "purged 1" in out.output, out.output
    assert outbox.dead_count(oconn) == 2
    oconn.close()


def test_kill_9_mid_delivery_loses_nothing_and_resends_under_the_original_ids(scratch_db, receiver):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    # Slow answers keep requests in flight when the process dies; resets add accepted-but-unanswered ones.
    receiver.set_faults(latency_ms=120, reset=0.1)
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 12)
    ensure_slot(scratch_db.config())
    env = pulse_env(scratch_db, PULSE_EXTERNAL_URL=receiver.url, PULSE_EXTERNAL_SECRET=SECRET,
                    PULSE_EXTERNAL__BATCH_MAX_EVENTS="40", PULSE_EXTERNAL__RETRY_INITIAL_S="0.05",
                    PULSE_EXTERNAL__RETRY_MAX_S="0.3", PULSE_EXTERNAL__BREAKER_OPEN_S="0.3",
                    PULSE_EXTERNAL__READ_TIMEOUT_S="2")
    total, per_txn = 3000, 150
    done = threading.Event()

    def writer() -> None:
        wconn = psycopg2.connect(scratch_db.url)
        wconn.autocommit = True
        wcur = wconn.cursor()
        for i in range(total // per_txn):
            insert_events_bulk(wcur, content, i * per_txn, per_txn)
            if done.wait(0.15):
                break
        wconn.close()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    kills = 0
    try:
        kills = kill_at_random(pulse_cmd("run", "--sink", "external"), env, rng, 3, 1.5, 3.0, note=f"(seed {seed})")
        t.join(60)
        expected = source_ids(cur)
        assert len(expected) == total
        receiver.set_faults(latency_ms=0)
        final = subprocess.Popen(pulse_cmd("run", "--sink", "external"), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: reported_pid(cur, scratch_db.slot) == final.pid or final.poll() is not None, 60,
                     "the final run to start streaming")
            wait_for(lambda: expected <= set(received_by_event(receiver)) or final.poll() is not None, 60,
                     f"all {total} events at the receiver (seed {seed})", interval=0.25)
            wait_for(lambda: local_pending(scratch_db) == 0 or final.poll() is not None, 30, "an empty outbox")
        finally:
            final.send_signal(signal.SIGTERM)
            final.wait(60)
        assert final.returncode == 0, final.stderr.read()[-3000:]
    finally:
        done.set()
    assert kills == 3
    stats = receiver.stats()
    by_event = received_by_event(receiver)
    assert set(by_event) == expected, f"seed {seed}: missing {sorted(expected - set(by_event))[:10]}"
    assert all(len(ids) == 1 for ids in by_event.values()), f"seed {seed}: an event re-sent under a new id"
    assert stats["conflicts"] == 0, stats["conflicting_ids"]
    assert stats["duplicates"] > 0  # re-sends happened, and were recognisable as such
    assert stats["signature_failures"] == 0
    assert_per_content_order(receiver)


def test_single_and_json_array_modes(scratch_db, receiver):
    conn = scratch_db.connect()
    cur = conn.cursor()
    for mode in ("single", "json-array"):
        receiver.state.reset()
        sink = ExternalSink(settings(scratch_db, receiver, mode=mode).external,
                            scratch_db.config(), name=f"ext_{mode.replace('-', '_')}")
        with Running(Pipeline(settings(scratch_db, receiver), [sink])):
            content = insert_content(cur, 2)
            ids = insert_events(cur, content, 6)
            wait_for(lambda: receiver.stats()["unique"] >= 6, 30, f"6 events in {mode} mode")
        events = receiver.events()
        if mode == "single":
            assert receiver.stats()["accepted_requests"] >= 6
            assert {e["event"]["data"]["event_id"] for e in events} >= set(ids)
        else:
            assert all("specversion" not in e["event"] for e in events)
            assert {e["event"]["event_id"] for e in events} >= set(ids)


def test_receiver_rejects_bad_signatures(receiver):
    import httpx

    body = b'[{"specversion":"1.0","id":"x","source":"s","type":"t"}]'
    r = httpx.post(receiver.url, content=body, headers={
        "content-type": "application/cloudevents-batch+json", "webhook-id": "msg_1",
        "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"})
    assert r.status_code == 401
    assert receiver.stats()["signature_failures"] == 1 and receiver.stats()["unique"] == 0


def _external_writes(cur) -> int:
    """Rows inserted, updated or deleted in the external sink's tables of Pulse's schema (cumulative stats)."""
    cur.execute("SELECT pg_stat_clear_snapshot()")
    cur.execute("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
                "WHERE schemaname = 'pulse' AND relname LIKE 'external%%'")
    return int(cur.fetchone()[0])


def test_the_local_outbox_writes_nothing_to_the_source_database_and_the_postgres_one_does(scratch_db, receiver):
    """pg_stat_user_tables of Pulse's schema: zero writes by the local outbox over a run; the PostgreSQL outbox,
    measured the same way in the same test, shows its INSERT and DELETE per event (so the probe sees writes)."""
    conn = scratch_db.connect()
    conn.autocommit = True
    cur = conn.cursor()
    content = insert_content(cur, 4)
    before = _external_writes(cur)
    sink = ExternalSink.from_settings(settings(scratch_db, receiver))
    assert sink.kind == "local"
    with Running(Pipeline(settings(scratch_db, receiver), [sink])):
        for i in range(4):
            insert_events_bulk(cur, content, i * 250, 250)
        expected = source_ids(cur)
        wait_for(lambda: set(received_by_event(receiver)) == expected, 30, "1000 events at the receiver")
    local_writes = _external_writes(cur) - before

    receiver.state.reset()
    pg = ExternalSink(settings(scratch_db, receiver, outbox="postgres").external, scratch_db.config(), name="ext_pg")
    start = _external_writes(cur)
    with Running(Pipeline(settings(scratch_db, receiver), [pg])):
        insert_events_bulk(cur, content, 1000, 250)
        wait_for(lambda: receiver.stats()["unique"] >= 250, 30, "250 events through the PostgreSQL outbox")
        # cumulative statistics reach pg_stat_* within about a second of each commit
        wait_for(lambda: _external_writes(cur) - start >= 500, 15, "the PostgreSQL outbox's writes in pg_stat")
    assert local_writes == 0


def test_a_full_local_outbox_pauses_and_holds_the_slot_by_default(scratch_db, receiver, tmp_path):
    conn = scratch_db.connect()
    conn.autocommit = True
    cur = conn.cursor()
    receiver.stop()
    cfg = settings(scratch_db, receiver, outbox_dir=str(tmp_path), outbox_max_bytes=1024 * 1024,
                   outbox_segment_bytes=256 * 1024)
    sink = ExternalSink.from_settings(cfg)
    with Running(Pipeline(cfg, [sink])) as running:
        content = insert_content(cur, 4)
        for i in range(10):  # about 3 MB of CloudEvents: three times the outbox's bound
            insert_events_bulk(cur, content, i * 500, 500)
        wait_for(lambda: sink.status().get("outbox_full"), 30, "the outbox to report full")
        status = sink.status()
        assert status["outbox_bytes"] <= 1024 * 1024, status
        assert status["pending"] < 5000
        cur.execute("SELECT pg_current_wal_lsn()")
        end = cur.fetchone()[0]
        cur.execute("SELECT confirmed_flush_lsn < %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    (end, scratch_db.slot))
        assert cur.fetchone()[0], "the slot must be held while the outbox is full (outbox_full = pause)"
        receiver.start()
        expected = source_ids(cur)
        wait_for(lambda: set(received_by_event(receiver)) == expected, 90, "all 5000 events once it drains",
                 interval=0.25)
        assert running.error is None  # the pipeline never stopped
    assert receiver.stats()["conflicts"] == 0
    assert_per_content_order(receiver)


def test_a_full_local_outbox_dead_letters_new_events_when_told_and_the_slot_advances(scratch_db, receiver, tmp_path):
    conn = scratch_db.connect()
    conn.autocommit = True
    cur = conn.cursor()
    receiver.stop()
    cfg = settings(scratch_db, receiver, outbox_dir=str(tmp_path), outbox_max_bytes=1024 * 1024,
                   outbox_segment_bytes=256 * 1024, outbox_full="dead-letter")
    sink = ExternalSink.from_settings(cfg)
    outbox = outbox_for(scratch_db)
    oconn = outbox.connect()
    with Running(Pipeline(cfg, [sink])):
        content = insert_content(cur, 4)
        for i in range(10):
            insert_events_bulk(cur, content, i * 500, 500)
        cur.execute("SELECT pg_current_wal_lsn()")
        end = cur.fetchone()[0]

        def slot_past() -> bool:
            cur.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                        (end, scratch_db.slot))
            return bool(cur.fetchone()[0])

        wait_for(slot_past, 30, "the slot to advance past every write")
        status = sink.status()
        dead = outbox.dead_count(oconn)
        assert status["outbox_bytes"] <= 1024 * 1024 and dead > 0
        assert status["pending"] + dead == 5000, (status, dead)
        assert status["overflow_dead_lettered"] == dead
        receiver.start()
        wait_for(lambda: receiver.stats()["unique"] == 5000 - dead, 60, "the outbox's events once it is back")
    in_dlq = {d["event_id"] for d in outbox.dead_letters(oconn, 10_000)}
    assert in_dlq | set(received_by_event(receiver)) == source_ids(cur)
    assert all(d["last_error"].startswith("outbox_full") for d in outbox.dead_letters(oconn, 5))
    oconn.close()


def test_gzip_once_the_endpoint_accepts_it_and_back_to_plain_bodies_after_a_415(scratch_db, receiver):
    conn = scratch_db.connect()
    conn.autocommit = True
    cur = conn.cursor()
    sink = ExternalSink.from_settings(settings(scratch_db, receiver))
    assert sink.cfg.compression == "auto"
    with Running(Pipeline(settings(scratch_db, receiver), [sink])):
        content = insert_content(cur, 3)
        first = insert_events(cur, content, 20)
        wait_for(lambda: set(first) <= set(received_by_event(receiver)), 30, "events before gzip is offered")
        assert receiver.stats()["gzip_requests"] == 0  # not offered: plain bodies
        receiver.set_faults(accept_gzip=True)
        for _ in range(5):
            insert_events(cur, content, 20)
        wait_for(lambda: receiver.stats()["gzip_requests"] > 0, 30, "gzip bodies once the endpoint lists gzip")
        receiver.set_faults(accept_gzip=False, refuse_gzip=True)
        insert_events(cur, content, 20)
        wait_for(lambda: receiver.stats()["faults_served"].get("415", 0) >= 1, 30, "a 415 to a gzip body")
        expected = source_ids(cur)
        wait_for(lambda: set(received_by_event(receiver)) == expected, 30, "every event, gzip or not")
    stats = receiver.stats()
    assert stats["signature_failures"] == 0 and stats["conflicts"] == 0
    assert sink.stats.dead == 0


def test_kafka_mode_reports_only_acknowledged_positions_so_offsets_wait_for_the_endpoint(scratch_db, receiver):
    """Under `pulse consume` (outbox = kafka) the sink's durable position is the delivered one: the consumer
    commits offsets only up to it (bus/consumer.py), so a crash re-reads what the endpoint has not acknowledged."""
    from datetime import datetime, timezone

    from pulse.model import Batch

    now = datetime.now(timezone.utc)
    events = [make_event(i, Position(1000 + i, 0), at=now, content_id=f"c-{i % 5}", duration_ms=1000, user_id="u",
                         event_type="play", device="ios", raw_payload="{}", content_slug="s", content_title="T",
                         content_type="podcast", length_seconds=100, engagement_seconds=1.0, engagement_pct=0.01)
              for i in range(1, 41)]
    receiver.set_faults(error_500=1.0)
    cfg = settings(scratch_db, receiver)
    sink = ExternalSink(cfg.external, scratch_db.config(), name="external@topic/0")
    assert sink.kind == "kafka"
    assert sink.open() == Position(0, 0)
    first = sink.write(Batch(tuple(events[:20])))
    second = sink.write(Batch(tuple(events[20:])))
    try:
        assert first == second == Position(0, 0)  # nothing acknowledged: nothing may be committed
        wait_for(lambda: receiver.stats()["faults_served"].get("500", 0) >= 2, 10, "refused requests")
        assert sink.flush() == Position(0, 0)
        assert sink.status()["pending"] == 40
        receiver.set_faults(error_500=0.0)
        wait_for(lambda: sink.flush() == events[-1].position, 20, "the delivered position to reach the last event")
        assert receiver.stats()["unique"] == 40
    finally:
        sink.close()
    assert not list(Path("external_outbox").glob(f"{scratch_db.slot}/*"))  # no local state in Kafka mode
