"""Two `imgclf serve` replicas, in their own processes, sharing one feedback store on a real PostgreSQL server."""

from __future__ import annotations

import base64
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
from serving_helpers import encode, start_server, wait_ready

from imgclf.serve.feedback import stats


def test_two_replicas_write_one_postgresql_store_concurrently(mnist_run, mnist, postgres_url, tmp_path):
    replicas = [start_server(mnist_run, "--feedback-db", postgres_url, "--feedback-per-minute", "100000",
                             stdout=subprocess.DEVNULL) for _ in range(2)]
    images = [base64.b64encode(encode(mnist.splits["test"].images[i, 0].numpy())).decode() for i in range(20)]
    try:
        for _, url in replicas:
            wait_ready(url)

        def send(i: int) -> list[int]:
            # 80 corrections, each sent to both replicas at once (a client retrying elsewhere): one row per key
            body = {"image": images[i % 20], "label": str(i % 10), "idempotency_key": f"c{i}"}
            with ThreadPoolExecutor(2) as both:
                return list(both.map(lambda url: httpx.post(f"{url}/v1/feedback", json=body, timeout=30).status_code,
                                     [url for _, url in replicas]))

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(send, range(80)))
        with ThreadPoolExecutor(16) as pool:  # and 40 without keys, spread over both replicas
            plain = list(pool.map(lambda i: httpx.post(f"{replicas[i % 2][1]}/v1/feedback", timeout=30, json={
                "image": images[i % 20], "label": str(i % 10)}).status_code, range(40)))
        metrics = [httpx.get(f"{url}/metrics").text for _, url in replicas]
    finally:
        for process, _ in replicas:
            process.terminate()
            process.wait(timeout=30)
    assert all(sorted(pair) == [200, 201] for pair in codes)  # one replica stored it, the other found it
    assert plain == [201] * 40
    numbers = stats(postgres_url)
    assert numbers["feedback"] == 120 and sum(numbers["per_label"].values()) == 120
    stored = [float(line.split()[-1]) for text in metrics for line in text.splitlines()
              if line.startswith("imgclf_feedback_total")]
    assert sum(stored) == 120  # each replica counted only the rows it wrote
