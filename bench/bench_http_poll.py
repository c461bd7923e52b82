"""What one poll of a local HTTP endpoint costs the poller: `httpx.get` against a kept `httpx.Client`.

`httpx.get` builds a client per call, and with it an SSL context (the
certificate bundle read and parsed) even for a plain http:// URL. A
benchmark that polls its receiver that way 20 times a second spends that
CPU on the cores it measures. This prints the CPU seconds per call (the
calling thread's `time.thread_time`) of both, against a loopback server in
the same process, and their ratio.

    .venv/bin/python bench/bench_http_poll.py [--calls 50]
"""

from __future__ import annotations

import argparse
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def cpu_per_call(get, url: str, calls: int) -> float:
    for _ in range(3):  # warm: imports, the first connection
        get(url)
    t0 = time.thread_time()
    for _ in range(calls):
        get(url).raise_for_status()
    return (time.thread_time() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        per_call = cpu_per_call(httpx.get, url, args.calls)
        with httpx.Client() as client:
            kept = cpu_per_call(client.get, url, args.calls)
    finally:
        server.shutdown()
    print(f"httpx.get: {per_call * 1000:.1f} ms of CPU per call; one kept httpx.Client: {kept * 1000:.2f} ms "
          f"per call; httpx.get / kept client = {per_call / kept:.0f}x ({args.calls} calls each)")
    print(f"at 20 polls a second: {20 * per_call:.2f} against {20 * kept:.3f} CPU seconds per second")


if __name__ == "__main__":
    main()
