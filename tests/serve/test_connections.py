"""Slow and greedy clients against a real server (points 5 and 6 of issue 19): header and body read timeouts, the cap
on connections and on bodies being received, and hang-ups counted as 499, not as server errors."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from serving_helpers import serving, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"), ["a", "b"], 1, 8)


@contextmanager
def connected(url: str):
    """A raw TCP connection to the server, to send HTTP as slowly and as incompletely as an attacker would."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        yield sock


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout if it never does)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def eventually(check: Callable[[], bool]) -> None:
    """Until `check()` holds (30 s at most): for what the server does after a client's socket call returns."""
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.05)


def post_head(length: int) -> bytes:
    return (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_connections_that_do_not_finish_their_headers_are_closed(run):
    with serving(run, header_timeout_s=0.5) as url, connected(url) as idle, connected(url) as partial, \
            connected(url) as kept:
        partial.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the blank line never comes
        kept.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health/live HTTP/1.1\r\n")
        assert until_closed(idle) == b"" and until_closed(partial) == b""
        answer = until_closed(kept)  # the first request answered, the second's headers never completed
        assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1
        assert httpx.get(f"{url}/health/live").status_code == 200


def test_headers_larger_than_64_kib_get_431(run):
    with serving(run) as url, connected(url) as flood:
        flood.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: " + b"a" * 70_000)
        head, _, body = until_closed(flood).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431") and "larger than 64 KiB" in json.loads(body)["error"]
        with connected(url) as fits:  # a large header under the cap is answered
            fits.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Big: "
                         + b"a" * 60_000 + b"\r\n\r\n")
            assert until_closed(fits).startswith(b"HTTP/1.1 200")


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(run):
    with serving(run, body_timeout_s=0.5) as url, connected(url) as slow:
        slow.sendall(post_head(1000) + b'{"image": "')
        head, _, body = until_closed(slow).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"content-security-policy" in head.lower()
        assert "did not arrive within 0.5 s" in json.loads(body)["error"]
        assert httpx.get(f"{url}/health/live").status_code == 200


def test_bodies_being_received_share_a_memory_budget(run):
    upload = {"image": "QUJD" * 1024}  # 4 KiB of base64, not an image
    with serving(run, max_buffered_mb=12 / 1024) as url, httpx.Client(base_url=url) as client:
        with connected(url) as slow:
            slow.sendall(post_head(20_000) + b"x" * 9000)  # 9 KiB held, under the 12 KiB budget
            busy = []
            eventually(lambda: busy.append(client.post("/v1/predict", json=upload)) or busy[-1].status_code == 503)
            assert "too many uploads" in busy[-1].json()["error"] and busy[-1].headers["retry-after"] == "1"
        eventually(lambda: client.post("/v1/predict", json=upload).status_code == 415)  # its bytes given back


def test_connections_beyond_the_cap_get_a_json_503_until_some_close(run):
    with serving(run, max_connections=2) as url, connected(url) as first, connected(url):
        answers = []
        eventually(lambda: answers.append(httpx.get(f"{url}/v1/model")) or answers[-1].status_code == 503)
        assert "too many connections" in answers[-1].json()["error"]
        assert answers[-1].headers["x-content-type-options"] == "nosniff"
        first.close()
        eventually(lambda: httpx.get(f"{url}/v1/model").status_code == 200)


def test_a_client_that_hangs_up_mid_body_is_counted_as_499_not_as_a_server_error(run):
    with serving(run) as url:
        with connected(url) as gone:
            gone.sendall(post_head(1000) + b'{"image": "')
        metrics = []
        eventually(lambda: metrics.append(httpx.get(f"{url}/metrics").text) or 'status="499"' in metrics[-1])
        assert 'imgclf_requests_total{path="other",status="499"} 1.0' in metrics[-1]
        assert 'status="500"' not in metrics[-1]
