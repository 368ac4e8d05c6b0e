"""Cheap requests that would buy expensive work (explanations, huge or long and thin images, feedback images),
sent to a real server while others wait for their answers."""

from __future__ import annotations

import base64
import io
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from serving_helpers import encode, serving

from imgclf.data.transforms import Preprocess, image_to_tensor
from imgclf.serve.app import REDUCING_GAP, ApiError, Deadline, ServeConfig, open_image, pixels_of


@pytest.fixture(scope="module")
def seven(mnist) -> np.ndarray:
    return mnist.splits["test"].images[0, 0].numpy()  # the first test digit, a 7


def _scaled(array: np.ndarray, width: int, height: int, fmt: str = "PNG") -> bytes:
    """The image blown up to width x height (a few KB as PNG: a small file, many pixels)."""
    return encode(np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.NEAREST)), fmt=fmt)


def _while_predicting(url: str, png: bytes, attack) -> tuple[list[float], object]:
    """Latencies of predictions of `png` sent one after another, from one client, while `attack()` runs, and
    what the attack returned; every one of them must succeed."""
    latencies, done = [], threading.Event()

    def predict() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set() or len(latencies) < 5:
                started = time.monotonic()
                assert client.post("/v1/predict", files={"file": png}).status_code == 200
                latencies.append(time.monotonic() - started)

    with ThreadPoolExecutor(1) as pool:
        predicting = pool.submit(predict)
        try:
            result = attack()
        finally:
            done.set()
        predicting.result()
    return latencies, result


def test_explanations_and_costly_images_do_not_hold_up_predictions(mnist_run, seven):
    png, big = encode(seven), _scaled(seven, 2048, 2048)  # 4 million pixels in a few KB
    strip = encode(np.zeros((1, 4_194_304), np.uint8))  # the 8 KB PNG that held every prediction for 8.6 s

    def attack() -> list[httpx.Response]:
        requests = [("/v1/explain", big)] * 6 + [("/v1/predict", big)] * 2 + [("/v1/predict", strip)]
        with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(lambda request: client.post(request[0], files={"file": request[1]}), requests))
            return [*answers, client.post("/v1/explain", files={"file": strip})]  # once the others are answered

    with serving(mnist_run, feedback_db=None, max_explains=1) as url:
        latencies, answers = _while_predicting(url, png, attack)
    explained, predicted, thin = answers[:6], answers[6:8], answers[8:]
    assert max(latencies) < 2, latencies  # a generous bound: before, they waited for every explanation
    assert {a.status_code for a in explained} == {200, 503}  # one at a time here, the others refused at once
    busy = next(a for a in explained if a.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "already explaining 1 images" in busy.json()["error"]
    assert all(a.headers["x-explained-class"] == "7" for a in explained if a.status_code == 200)
    assert [a.json()["label"] for a in predicted] == ["7", "7"]  # reduced first, read as the digit it is
    for answer in thin:
        assert answer.status_code == 422 and "4194304x1" in answer.json()["error"]
        assert "one side more than 32 times the other" in answer.json()["error"]


def test_shape_and_per_request_pixel_limits(mnist_run, seven):
    png_page, jpeg_page = _scaled(seven, 1000, 1000), _scaled(seven, 1000, 1000, "JPEG")
    with (serving(mnist_run, feedback_db=None, max_request_pixels=3_000_000) as url,
          httpx.Client(base_url=url, timeout=60) as client):
        for width, height, status in [(33, 1, 422), (1, 33, 422), (32, 1, 200), (1, 32, 200)]:
            answer = client.post("/v1/predict", files={"file": encode(np.zeros((height, width), np.uint8))})
            assert answer.status_code == status, (width, height, answer.text)
        crowded = client.post("/v1/predict/batch", files=[("files", png_page)] * 4)
        assert crowded.status_code == 413, crowded.text
        assert ("the 4 images have 4,000,000 pixels in all, more than the 3,000,000 allowed in one request"
                in crowded.json()["error"])
        # JPEGs are decoded at 1/8 of their size here (125 x 125, still more than the model needs): they fit
        photos = client.post("/v1/predict/batch", files=[("files", jpeg_page)] * 4)
        assert photos.status_code == 200 and [p["label"] for p in photos.json()["predictions"]] == ["7"] * 4


def test_large_images_are_reduced_before_the_resize_and_read_nearly_as_predict_reads_them(seven):
    config, on_time = ServeConfig(), Deadline.of(time.monotonic(), 60_000)
    prepare = Preprocess((28, 28), 3, (0.5,) * 3, (0.25,) * 3).prepare

    def served_and_predicted(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = pixels_of(open_image(data, config, 28), 28, on_time)
        return pixels, prepare(image_to_tensor(Image.open(io.BytesIO(data)))[None])[0]

    small, predicted = served_and_predicted(encode(seven, "RGB"))
    assert torch.equal(prepare(small[None])[0], predicted)  # a small image is read exactly as imgclf predict does
    turned = io.BytesIO()  # a JPEG drafted at 1/4, then reduced: the camera's orientation must survive both
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(seven).resize((1200, 600)).convert("RGB").save(turned, "JPEG", exif=exif, quality=95)
    for data in (_scaled(seven, 3000, 2000), turned.getvalue()):
        large, predicted = served_and_predicted(data)
        assert all(REDUCING_GAP * 28 <= side < 2 * REDUCING_GAP * 28 for side in large.shape[1:]), large.shape
        assert (prepare(large[None])[0].float() - predicted.float()).abs().mean() < 2  # of 255
    late = open_image(_scaled(seven, 2000, 2000), config, 28)
    with pytest.raises(ApiError) as missed:
        pixels_of(late, 28, Deadline.of(time.monotonic() - 1, 500))
    assert missed.value.status == 504 and "no answer within 500 ms" in missed.value.message
    assert late.tile  # nothing was decoded


def test_health_answers_promptly_while_feedback_images_are_decoded(mnist_run, tmp_path):
    # long and thin (allowed here) costs the most to resize for its size: 0.3 s of CPU each, which ran on the event loop
    image = base64.b64encode(encode(np.full((1_000_000, 1), 200, np.uint8))).decode()

    def attack() -> list[int]:
        with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(12) as pool:
            return list(pool.map(lambda i: client.post("/v1/feedback", json={"image": image, "label": str(i % 10)}
                                                       ).status_code, range(12)))

    with serving(mnist_run, feedback_db=str(tmp_path / "f.db"), max_aspect=1e7) as url:
        latencies = []
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(attack)
            with httpx.Client(base_url=url, timeout=30) as client:
                while not sent.done() or not latencies:
                    started = time.monotonic()
                    assert client.get("/health/live").status_code == 200
                    latencies.append(time.monotonic() - started)
                    time.sleep(0.01)
            statuses = sent.result()
    assert statuses == [201] * 12
    # most probes wait for nothing (before, most waited for a decode: 0.2-0.3 s each); a bound, not a benchmark
    assert statistics.median(latencies) < 0.1, latencies
