"""Helpers shared by the integration tests (kafka)."""

from __future__ import annotations

import signal
import subprocess

from .pipeline_helpers import pulse_cmd


def drop_topics(bootstrap: str, topics: list[str]) -> None:
    """Delete a test's topics (those already gone are fine)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(topics).values():
        try:
            future.result(30)
        except Exception:  # already gone
            pass


def spawn_pulse(env, *args):
    return subprocess.Popen(pulse_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_process(proc, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(60)
