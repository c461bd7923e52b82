"""The Kafka broker stopped and restarted while `pulse produce` and the three consumers run.

The broker is a private one (the shared broker serves other tests). Events
keep coming while it is down; the producer holds them (the slot is not
acknowledged past what the broker has), the consumers wait and resume from
their committed offsets, and a consumer started during the outage waits for
the broker; at the end every destination equals the source.
"""

from __future__ import annotations

import signal
import subprocess
import time

from pulse.source.slot import ensure_slot
from tests.conftest import unique

from .chaos_helpers import Destinations, Writer, assert_exact
from .pipeline_helpers import insert_content, wait_for
from .private_services import private_kafka  # noqa: F401  (fixture)
from .pipeline_helpers import pulse_cmd, pulse_env

DOWN_S = 15


def test_broker_killed_and_back_under_produce_and_consumers(scratch_db, services, private_kafka, tmp_path):
    """SIGKILL of the broker (a clean SIGTERM stop passed too, see the soak; one variant keeps CI short)."""
    cur = scratch_db.connect().cursor()
    content = insert_content(cur, 20)
    ensure_slot(scratch_db.config())
    dest = Destinations.shared(services, tmp_path / "spool")
    topic = unique("pulse_t")
    env = pulse_env(scratch_db, **dest.env(), PULSE_KAFKA_BOOTSTRAP=private_kafka.bootstrap,
                    PULSE_KAFKA__TOPIC=topic, PULSE_KAFKA__CONTENT_TOPIC=topic + "_content",
                    PULSE_KAFKA__PARTITIONS="4", PULSE_KAFKA__GROUP_PREFIX=unique("grp"))
    logs = {}
    procs = {}
    for name, args in (("produce", ("produce",)), ("redis", ("consume", "--sink", "redis")),
                       ("bigquery", ("consume", "--sink", "bigquery")),
                       ("external", ("consume", "--sink", "external"))):
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "w") as fh:
            procs[name] = subprocess.Popen(pulse_cmd(*args), env=env, stdout=fh, stderr=subprocess.STDOUT)

    def exited() -> list[str]:
        return [f"{n}: {logs[n].read_text()[-1500:]}" for n, p in procs.items() if p.poll() is not None]

    writer = Writer(scratch_db.url, content, per_txn=50, pause=0.1)
    try:
        writer.start()
        wait_for(lambda: len(dest.receiver_ids()) > 500 or exited(), 120, "events through Kafka")
        private_kafka.stop(signal.SIGKILL)
        down_at = time.monotonic()
        committed = writer.committed
        wait_for(lambda: writer.committed > committed + 500, 30, "the source to keep changing")
        # A consumer that starts while the broker is down waits for it (it used to exit with
        # "Kafka ... unreachable"): the Redis consumer is killed and started again now.
        procs["redis"].send_signal(signal.SIGKILL)
        procs["redis"].wait(30)
        with open(logs["redis"], "a") as fh:
            procs["redis"] = subprocess.Popen(pulse_cmd("consume", "--sink", "redis"), env=env, stdout=fh,
                                              stderr=subprocess.STDOUT)
        wait_for(lambda: "consume.broker_unreachable" in logs["redis"].read_text() or exited(), 60,
                 "the restarted consumer to wait for the broker")
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))  # the outage itself
        assert not exited()
        private_kafka.start()
        seen = len(dest.receiver_ids())
        wait_for(lambda: len(dest.receiver_ids()) > seen + 500 or exited(), 180, "deliveries after the restart")
        writer.stop()
        tally = assert_exact(scratch_db.url, dest, env, timeout=240, alive=lambda: not exited())
        assert tally.source > 2_000
        assert not exited()
    finally:
        writer.stop()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        dest.cleanup()
    assert all(p.returncode == 0 for p in procs.values()), {n: logs[n].read_text()[-1500:] for n in procs}
