"""The HTTP service, really started: uvicorn on a loopback port, httpx clients, a real SQLite file."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from serving_helpers import encode, serving, serving_app, start_server, tiny_run, wait_ready

from imgclf.cli import main
from imgclf.data import load_dataset
from imgclf.export import export_run
from imgclf.predict import predict_files
from imgclf.rundir import sha256, update_meta
from imgclf.serve.app import ServeConfig, Service, create_app
from imgclf.serve.feedback import FeedbackStore, stats


@pytest.fixture(scope="module")
def digits(mnist, tmp_path_factory):
    """The first 32 MNIST test digits as PNG bytes and files, and what `imgclf predict` says of them."""
    folder = tmp_path_factory.mktemp("digits")
    arrays = [mnist.splits["test"].images[i, 0].numpy() for i in range(32)]
    paths = []
    for i, array in enumerate(arrays):
        paths.append(folder / f"{i}.png")
        paths[-1].write_bytes(encode(array))
    return arrays, paths


@pytest.fixture(scope="module")
def server(mnist_run, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "feedback.db"
    with serving(mnist_run, feedback_db=str(db), max_pixels=512 * 512, max_body_mb=1, max_images=8) as url:
        yield url, db


def test_predictions_match_the_cli_in_every_request_shape(server, digits, mnist_run):
    url, _ = server
    _, paths = digits
    expected = [p.top[0][0] for p in predict_files(mnist_run, paths[:8])]
    with httpx.Client(base_url=url) as client:
        for path, label in zip(paths[:8], expected, strict=True):
            upload = client.post("/v1/predict", files={"file": path.read_bytes()})
            assert upload.status_code == 200 and upload.json()["label"] == label
            as_json = client.post("/v1/predict", json={"image": base64.b64encode(path.read_bytes()).decode()})
            assert as_json.json()["label"] == label
            raw = client.post("/v1/predict", content=path.read_bytes(), headers={"content-type": "image/png"})
            assert raw.json()["label"] == label
        body = upload.json()
        assert len(body["top"]) == 5 and sum(t["probability"] for t in body["top"]) <= 1 + 1e-6
        assert body["model"]["name"] == "mnist-fast" and upload.headers["x-model-version"] == body["model"]["version"]
        batch = client.post("/v1/predict/batch", files=[("files", p.read_bytes()) for p in paths[:8]])
        assert [p["label"] for p in batch.json()["predictions"]] == expected
        model = client.get("/v1/model").json()
        assert model["classes"] == [str(i) for i in range(10)] and model["input"]["size"] == [28, 28]
        assert client.get("/health/live").status_code == 200 and client.get("/health/ready").json() == {
            "status": "ready"}
        assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(("channels", "size", "page"), [(1, 28, "draw"), (1, 32, "draw"), (1, 64, "upload"),
                                                         (3, 28, "upload")])
def test_the_model_endpoint_names_the_page_that_fits_the_model(tmp_path, channels, size, page):
    with serving(tiny_run(tmp_path, ["a", "b"], channels, size)) as url:
        model = httpx.get(f"{url}/v1/model").json()
    assert model["page"] == page and model["input"]["channels"] == channels


def test_any_format_and_mode_is_read_like_thepng(server, digits):
    url, _ = server
    arrays, _ = digits
    seven = arrays[0]  # a 7
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; viewers rotate by 90 degrees clockwise
    Image.fromarray(seven).rotate(90, expand=True).save(rotated, "JPEG", exif=exif, quality=95)
    variants = {"L": encode(seven), "RGB": encode(seven, "RGB"), "RGBA": encode(seven, "RGBA"), "P": encode(seven, "P"),
                "16-bit": encode(seven.astype(np.uint16) * 257), "JPEG CMYK": encode(seven, "CMYK", "JPEG", quality=95),
                "WebP": encode(seven, "RGB", "WEBP", lossless=True), "BMP": encode(seven, fmt="BMP"),
                "GIF": encode(seven, fmt="GIF"), "EXIF-rotated JPEG": rotated.getvalue()}
    with httpx.Client(base_url=url) as client:
        for name, data in variants.items():
            response = client.post("/v1/predict", files={"file": data})
            assert response.status_code == 200, (name, response.text)
            assert response.json()["label"] == "7", name


def test_bad_input_gets_a_clear_error_and_never_a_500(server, digits):
    url, _ = server
    seven = digits[0][0]
    png = encode(seven)
    bomb = encode(np.zeros((600, 600), dtype=np.uint8))  # 360,000 pixels > the 262,144 allowed here
    cases = [
        ({"files": {"file": b""}}, 400, "empty"),
        ({"files": {"file": b"hello, world"}}, 415, "not an image"),
        ({"files": {"file": png[: len(png) // 2]}}, 422, "damaged or truncated"),
        ({"files": {"file": encode(seven, fmt="TIFF")}}, 415, "TIFF images are not accepted"),
        ({"files": {"file": bomb}}, 413, "600x600 pixels"),
        ({"files": {"file": os.urandom(2 * 2**20)}}, 413, "larger than 1.0 MiB"),
        ({"json": {"image": "not base64!"}}, 422, "not valid base64"),
        ({"json": {"picture": "x"}}, 422, 'send {"image": base64}'),
        ({"content": b"{oops", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": png, "headers": {"content-type": "text/plain"}}, 415, "Content-Type: image/png"),
        ({"content": png[: len(png) // 2], "headers": {"content-type": "image/png"}}, 422, "damaged or truncated"),
        ({"files": {"other": png}}, 422, "multipart field 'file'"),
    ]
    with httpx.Client(base_url=url) as client:
        for request, status, message in cases:
            response = client.post("/v1/predict", **request)
            assert response.status_code == status and message in response.json()["error"], (message, response.text)
        header_bomb = client.post("/v1/predict", files={"file": _claims_size(png, 20000, 20000)})
        assert header_bomb.status_code == 413 and "too large" in header_bomb.json()["error"]  # 400M pixels claimed
        deep = client.post("/v1/predict", content=b"[" * 100_000, headers={"content-type": "application/json"})
        assert deep.status_code == 400 and "not valid JSON" in deep.json()["error"]
        mixed = client.post("/v1/predict/batch", files=[("files", png)], data={"files": "text"})
        assert mixed.status_code == 422 and "multipart field 'files'" in mixed.json()["error"]
        too_many = client.post("/v1/predict/batch", files=[("files", png)] * 9)
        assert too_many.status_code == 413 and "more than the 8 allowed" in too_many.json()["error"]
        assert client.post("/v1/predict", files={"file": png}).status_code == 200  # still serving
        metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics and 'imgclf_requests_total{path="/v1/predict",status="415"}' in metrics


def _claims_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims another size (with a valid checksum): what a decompression bomb looks like."""
    header = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


def test_feedback_is_committed_before_the_answer_and_idempotent(server, digits):
    url, db = server
    png = encode(digits[0][0])
    with httpx.Client(base_url=url) as client:
        prediction = client.post("/v1/predict", files={"file": png}).json()
        stored = client.post("/v1/feedback", json={"prediction_id": prediction["prediction_id"], "label": "1",
                                                   "idempotency_key": "abc"})
        assert stored.status_code == 201 and stored.json()["predicted"] == "7"
        with sqlite3.connect(db) as check:  # another connection sees the row as soon as the answer came
            row = check.execute("SELECT label, predicted, image, model_version FROM feedback WHERE id = ?",
                                (stored.json()["feedback_id"],)).fetchone()
            assert row[:2] == ("1", "7") and row[2] == png and row[3] == prediction["model"]["version"]
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        again = client.post("/v1/feedback", json={"prediction_id": prediction["prediction_id"], "label": "1",
                                                  "idempotency_key": "abc"})
        assert again.status_code == 200 and again.json()["feedback_id"] == stored.json()["feedback_id"]
        direct = client.post("/v1/feedback", json={"image": base64.b64encode(png).decode(), "label": "7"})
        assert direct.status_code == 201 and direct.json()["predicted"] == "7"  # scored by the served model
        reused = client.post("/v1/feedback", json={"prediction_id": prediction["prediction_id"], "label": "2",
                                                   "idempotency_key": "abc"})
        assert reused.status_code == 409 and "already used for the label '1'" in reused.json()["error"]
        for body, message in [({"prediction_id": prediction["prediction_id"], "label": "cat"}, "not one of the"),
                              ({"prediction_id": ["a", "list"], "label": "1"}, "prediction_id must be a string"),
                              ({"image": base64.b64encode(png).decode(), "label": "1", "idempotency_key": {"a": 1}},
                               "idempotency_key must be a string"),
                              ({"prediction_id": prediction["prediction_id"], "label": 7}, "not one of the"),
                              ({"prediction_id": "nope", "label": "1"}, "unknown prediction_id 'nope'"),
                              ({"label": "1"}, "needs a prediction_id or the image"),
                              ({"image": base64.b64encode(b"text").decode(), "label": "1"}, "not an image")]:
            response = client.post("/v1/feedback", json=body)
            assert response.status_code in (415, 422) and message in response.json()["error"], response.text
        assert "imgclf_feedback_total 2.0" in client.get("/metrics").text
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 2


def test_feedback_cannot_be_forged_replayed_or_grow_without_bound(tmp_path):
    db = tmp_path / "feedback.db"
    png = encode(np.full((28, 28), 200, dtype=np.uint8))
    image = base64.b64encode(png).decode()
    token = {"authorization": "Bearer t0ken"}
    with (serving(tiny_run(tmp_path / "run", ["a", "b"], 1, 28), feedback_db=str(db), feedback_token="t0ken",
                  feedback_max_rows=2) as url, httpx.Client(base_url=url) as client):
        assert client.get("/v1/model").json()["feedback"] == "token"
        pid = client.post("/v1/predict", files={"file": png}).json()["prediction_id"]
        body = {"prediction_id": pid, "label": "a"}
        for headers in ({}, {"authorization": "Bearer nope"}):
            refused = client.post("/v1/feedback", json=body, headers=headers)
            assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["error"]
        # what any web page can post cross-site without a preflight: text/plain and forms
        for forged in ({"content": json.dumps(body), "headers": {**token, "content-type": "text/plain"}},
                       {"data": body, "headers": token}, {"files": {"label": b"a"}, "headers": token}):
            response = client.post("/v1/feedback", **forged)
            assert response.status_code == 415 and "application/json" in response.json()["error"], response.text
        stored = client.post("/v1/feedback", json=body, headers=token)
        assert stored.status_code == 201
        other = client.post("/v1/feedback", json={**body, "label": "b", "idempotency_key": "new"}, headers=token)
        assert other.status_code == 409 and "already corrected to 'a'" in other.json()["error"]
        same = client.post("/v1/feedback", json={**body, "idempotency_key": "new"}, headers=token)
        assert same.status_code == 200 and same.json()["feedback_id"] == stored.json()["feedback_id"]
        assert client.post("/v1/feedback", json={"image": image, "label": "b"}, headers=token).status_code == 201
        full = client.post("/v1/feedback", json={"image": image, "label": "b"}, headers=token)
        assert full.status_code == 507 and "the feedback store is full" in full.json()["error"]
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT prediction_id, label FROM feedback ORDER BY id").fetchall() == [(pid, "a"),
                                                                                                     (None, "b")]


def test_feedback_rate_per_client_and_one_error_shape(tmp_path):
    app = create_app(tiny_run(tmp_path / "run", ["a", "b"], 1, 28),
                     ServeConfig(feedback_db=str(tmp_path / "feedback.db"), feedback_per_minute=0.01))

    @app.get("/typed")
    async def typed(n: int) -> dict:  # a route with a typed parameter, as FastAPI validates it
        return {"n": n}

    image = base64.b64encode(encode(np.full((28, 28), 9, dtype=np.uint8))).decode()
    with serving_app(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/v1/model").json()["feedback"] == "open"
        huge = client.post("/v1/feedback", json={"image": image, "label": "x" * 3_000_000})
        assert huge.status_code == 422 and len(huge.json()["error"]) < 200 and "xxx...xxx" in huge.json()["error"]
        limited = client.post("/v1/feedback", json={"image": image, "label": "a"})  # the second post in a minute
        assert limited.status_code == 429 and "at most 0.01 a minute" in limited.json()["error"]
        assert int(limited.headers["retry-after"]) > 60
        with httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as elsewhere:
            assert elsewhere.post("/v1/feedback", json={"image": image, "label": "a"}).status_code == 201
        for response, status, message in [
                (client.get("/nowhere/" + "y" * 1000), 404, "there is nothing at '/nowhere/yyy"),
                (client.get("/v1/predict"), 405, "'GET' is not allowed on '/v1/predict'; use POST."),
                (client.get("/typed", params={"n": "seven"}), 422, "'query.n': Input should be a valid integer"),
                (client.post("/v1/explain", params={"method": "m" * 10_000}, files={"file": b"x"}), 422, "mmm...mmm")]:
            assert response.status_code == status and message in response.json()["error"], response.text
            assert list(response.json()) == ["error"] and len(response.text) < 300


def test_feedback_stats_and_export_to_a_training_folder(tmp_path, capsys):
    store = FeedbackStore(tmp_path / "f.db")
    seven, one = encode(np.eye(28, dtype=np.uint8) * 255), encode(np.full((28, 28), 9, np.uint8))
    store.add("1", seven, predicted="7", model_version="v1")
    store.add("1", one, predicted="7", model_version="v1")
    store.add("7", seven, predicted="7", model_version="v2")
    store.close()
    assert stats(tmp_path / "f.db") == {"feedback": 3, "per_label": {"1": 2, "7": 1}, "confirmed": 1,
                                        "confusions": [{"predicted": "7", "label": "1", "count": 2}],
                                        "unscored": 0, "model_versions": {"v1": 2, "v2": 1}}
    assert main(["feedback", "export", str(tmp_path / "f.db"), "--out", str(tmp_path / "folder")]) == 0
    assert sorted(p.relative_to(tmp_path / "folder").as_posix() for p in (tmp_path / "folder").rglob("*.png")) == [
        "1/1.png", "1/2.png", "7/3.png"]
    assert (tmp_path / "folder" / "1" / "2.png").read_bytes() == one
    dataset = load_dataset(f"folder:{tmp_path / 'folder'}", fractions={"train": 1.0})
    assert dataset.classes == ["1", "7"] and len(dataset.splits["train"]) == 3
    assert main(["feedback", "stats", str(tmp_path / "f.db")]) == 0
    assert "most common corrections: 7 -> 1 (2)" in capsys.readouterr().out
    assert main(["feedback", "stats", str(tmp_path / "none.db")]) == 1
    assert "there is no feedback database" in capsys.readouterr().err
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    assert main(["feedback", "stats", str(tmp_path / "junk.db")]) == 1
    assert "as an imgclf feedback database" in capsys.readouterr().err


def test_corrections_sent_with_an_image_count_with_what_the_served_model_said(mnist_run, digits, tmp_path, capsys):
    _, paths = digits
    said = [p.top[0][0] for p in predict_files(mnist_run, paths[:3])]
    sent = [(0, str((int(said[0]) + 1) % 10)), (0, str((int(said[0]) + 1) % 10)), (1, str((int(said[1]) + 3) % 10)),
            (2, said[2])]  # two corrections of one image, one of another, one that agrees with the model
    db = tmp_path / "f.db"
    with serving(mnist_run, feedback_db=str(db)) as url, httpx.Client(base_url=url) as client:
        for i, label in sent:
            response = client.post("/v1/feedback", json={"image": base64.b64encode(paths[i].read_bytes()).decode(),
                                                         "label": label})
            assert response.status_code == 201 and response.json()["predicted"] == said[i]
    pairs = Counter((said[i], label) for i, label in sent if label != said[i])
    numbers = stats(db)
    assert numbers["confusions"] == [{"predicted": p, "label": t, "count": n} for (p, t), n in
                                     sorted(pairs.items(), key=lambda item: (-item[1], item[0]))]
    assert numbers["confirmed"] == 1 and numbers["unscored"] == 0
    assert main(["feedback", "stats", str(db)]) == 0
    (p, t), n = pairs.most_common(1)[0]
    out = capsys.readouterr().out
    assert f"most common corrections: {p} -> {t} ({n})" in out and "not counted above" not in out
    store = FeedbackStore(db)  # a row an older server stored without scoring its image
    store.add("3", paths[3].read_bytes())
    store.close()
    assert main(["feedback", "stats", str(db)]) == 0
    assert "not counted above: 1 rows without a prediction" in capsys.readouterr().out


def test_concurrent_clients_share_batches_and_get_their_own_answers(server, digits, mnist_run):
    url, _ = server
    _, paths = digits
    expected = [p.top[0][0] for p in predict_files(mnist_run, paths)]
    with httpx.Client(base_url=url) as client:
        before = _batches(client.get("/metrics").text)

        def ask(i: int) -> str:
            return client.post("/v1/predict", files={"file": paths[i].read_bytes()}).json()["label"]

        with ThreadPoolExecutor(32) as pool:
            labels = list(pool.map(ask, range(32)))
        after = _batches(client.get("/metrics").text)
    assert labels == expected
    images, passes = after[0] - before[0], after[1] - before[1]
    assert images == 32 and passes < 32  # some requests shared a forward pass


def test_a_lone_client_never_waits_for_company(mnist_run, digits):
    """A batch waits for requests known to be on their way, not for the window: with a 10 s window and a 3 s
    deadline a lone request is answered (it would be a 504 if it sat out the window)."""
    png = digits[1][0].read_bytes()
    with (serving(mnist_run, max_wait_ms=10_000, deadline_ms=3000, feedback_db=None) as url,
          httpx.Client(base_url=url) as client):
        answers = [client.post("/v1/predict", content=png, headers={"content-type": "image/png"}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3
        assert _batches(client.get("/metrics").text) == (3, 3)


def _batches(metrics: str) -> tuple[float, float]:
    """(images, forward passes) so far, from the batch size histogram."""
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("imgclf_batch_size_"))
    return float(values["imgclf_batch_size_sum"]), float(values["imgclf_batch_size_count"])


def test_overload_gets_a_fast_503_then_service_recovers(mnist_run, digits, tmp_path):
    png = digits[1][0].read_bytes()
    with (serving(mnist_run, max_batch=1, max_wait_ms=0, max_queue=1, feedback_db=None) as url,
          httpx.Client(base_url=url, limits=httpx.Limits(max_connections=64)) as client):
        with ThreadPoolExecutor(64) as pool:
            responses = list(pool.map(lambda _: client.post("/v1/predict", files={"file": png}), range(128)))
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 503} and 503 in statuses and 200 in statuses
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
        assert client.post("/v1/predict", files={"file": png}).status_code == 200
        assert client.post("/v1/feedback", json={"label": "1"}).status_code == 503  # feedback disabled


def test_dark_on_light_photos_with_invert_auto(mnist_run, digits):
    arrays, _ = digits
    paper = [encode(255 - a) for a in arrays[:16]]  # dark digits on white, like a photo of a drawing
    truth = [encode(a) for a in arrays[:16]]
    with serving(mnist_run, invert="auto", feedback_db=None) as url, httpx.Client(base_url=url) as client:
        inverted = [client.post("/v1/predict", files={"file": p}).json()["label"] for p in paper]
        normal = [client.post("/v1/predict", files={"file": p}).json()["label"] for p in truth]
    assert inverted == normal  # light-on-dark images are left as they are


def test_cli_serve_drains_on_sigterm(mnist_run, digits, tmp_path):
    process, url = start_server(mnist_run, "--feedback-db", str(tmp_path / "f.db"), stdout=subprocess.PIPE, text=True)
    try:
        wait_ready(url)
        answer = httpx.post(f"{url}/v1/predict", files={"file": digits[1][0].read_bytes()})
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert f"serving {mnist_run} on {url}" in process.stdout.read()
    finally:
        process.kill()


def test_worker_processes_share_prediction_ids_and_metrics_and_stop_on_sigterm(mnist_run, digits, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process, url = start_server(mnist_run, "--workers", "2", "--feedback-db", str(tmp_path / "f.db"),
                                "--keep-unlabelled", "4", stdout=subprocess.DEVNULL,
                                env={**os.environ, "TMPDIR": str(scratch)})
    try:
        wait_ready(url)
        statuses = []
        for path in digits[1][:12]:  # a new connection per request: the kernel spreads them over the workers
            answer = httpx.post(f"{url}/v1/predict", content=path.read_bytes(), headers={"content-type": "image/png"})
            correction = httpx.post(f"{url}/v1/feedback", json={"prediction_id": answer.json()["prediction_id"],
                                                                "label": "3"})
            statuses.append(correction.status_code)
        metrics = httpx.get(f"{url}/metrics").text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert statuses == [201] * 12  # whichever worker made the prediction
    assert 'imgclf_requests_total{path="/v1/predict",status="200"} 12.0' in metrics
    assert "imgclf_feedback_total 12.0" in metrics and stats(tmp_path / "f.db")["feedback"] == 12
    with sqlite3.connect(tmp_path / "f.db") as db:  # both workers offered their images to one bounded sample
        assert db.execute("SELECT COUNT(*), MAX(slot) FROM kept").fetchone() == (4, 3)
        assert db.execute("SELECT seen FROM kept_seen").fetchone() == (12,)
    assert list(scratch.iterdir()) == []  # the shared files are gone


def test_admin_reload_needs_the_token_stays_in_the_models_folder_and_keeps_serving_on_failure(
        mnist_run, digits, tmp_path, server):
    assert httpx.post(f"{server[0]}/admin/reload", json={"run": "x"}).status_code == 404  # off by default
    models = tmp_path / "models"
    first, second = (shutil.copytree(mnist_run, models / name) for name in ("first", "second"))
    weights = load_file(second / "model.safetensors")
    weights["head.bias"] = weights["head.bias"] + 0.01  # other weights, so another version
    save_file(weights, second / "model.safetensors")
    update_meta(second, sha256=sha256(second / "model.safetensors"))
    (models / "broken").mkdir()
    (models / "broken" / "model.json").write_text("{")
    png = digits[1][0].read_bytes()
    token = {"authorization": "Bearer s3cret"}
    with (serving(first, admin_token="s3cret", models_dir=str(models), feedback_db=None) as url,
          httpx.Client(base_url=url) as client):
        old = client.post("/v1/predict", files={"file": png}).json()["model"]["version"]
        assert client.post("/admin/reload", json={"run": "second"}).status_code == 401
        assert client.post("/admin/reload", json={"run": "second"},
                           headers={"authorization": "Bearer nope"}).status_code == 401
        assert client.post("/admin/reload", content=b"{oops", headers={"content-type": "application/json"}
                           ).status_code == 401  # the token is checked before the body is read
        for outside in ("../..", str(tmp_path), "http://example.com/model", "", None, "a\x00b"):
            response = client.post("/admin/reload", json={"run": outside}, headers=token)
            assert response.status_code == 422 and "inside" in response.json()["error"], outside
        broken = client.post("/admin/reload", json={"run": "broken"}, headers=token)
        assert broken.status_code == 422 and f"still serving mnist-fast {old}" in broken.json()["error"]
        assert client.post("/v1/predict", files={"file": png}).json()["model"]["version"] == old
        swapped = client.post("/admin/reload", json={"run": "second"}, headers=token)
        assert swapped.status_code == 200 and swapped.json()["version"] != old
        answer = client.post("/v1/predict", files={"file": png})
        assert answer.json()["model"]["version"] == swapped.json()["version"] == answer.headers["x-model-version"]


def test_a_run_with_a_current_onnx_export_is_served_by_onnxruntime(mnist_run, digits, tmp_path):
    run = shutil.copytree(mnist_run, tmp_path / "run")
    export_run(run, "onnx", out=run)
    pngs = [path.read_bytes() for path in digits[1][:8]]
    answers = {}
    for runtime in ("auto", "torch"):
        with serving(run, runtime=runtime, feedback_db=None) as url, httpx.Client(base_url=url) as client:
            served = client.get("/v1/model").json()["runtime"]
            answers[served] = [client.post("/v1/predict", content=png, headers={"content-type": "image/png"}).json()
                               for png in pngs]
    assert set(answers) == {"onnxruntime", "torch"}
    for fast, slow in zip(answers["onnxruntime"], answers["torch"], strict=True):
        assert fast["label"] == slow["label"] and fast["model"] == slow["model"]
        assert fast["top"][0]["probability"] == pytest.approx(slow["top"][0]["probability"], abs=1e-5)
    weights = load_file(run / "model.safetensors")
    weights["head.bias"] = weights["head.bias"] + 0.01  # trained further after the export: the export is stale
    save_file(weights, run / "model.safetensors")
    update_meta(run, sha256=sha256(run / "model.safetensors"))
    with serving(run, feedback_db=None) as url:
        assert httpx.get(f"{url}/v1/model").json()["runtime"] == "torch"


def test_a_reload_that_fails_without_a_message_is_still_a_422(tmp_path, monkeypatch):
    models = tmp_path / "models"
    first, _ = (tiny_run(models / name, ["a", "b"], 1, 28) for name in ("first", "second"))
    load = Service.load

    def failing(service, path):
        if Path(path).name == "second":
            raise RuntimeError()  # some libraries raise errors with no message at all
        return load(service, path)

    monkeypatch.setattr(Service, "load", failing)
    with serving(first, admin_token="s3cret", models_dir=str(models)) as url:
        answer = httpx.post(f"{url}/admin/reload", json={"run": "second"}, headers={"authorization": "Bearer s3cret"})
    assert answer.status_code == 422 and "cannot load 'second' (RuntimeError)" in answer.json()["error"]


def test_kill_9_during_feedback_loses_no_acknowledged_row(mnist_run, digits, tmp_path):
    db = tmp_path / "feedback.db"
    image = base64.b64encode(digits[1][0].read_bytes()).decode()
    process, url = start_server(mnist_run, "--feedback-db", str(db), "--feedback-per-minute", "100000",
                                stdout=subprocess.DEVNULL)
    acknowledged = []
    try:
        wait_ready(url)

        def post(i: int) -> None:
            try:
                response = httpx.post(f"{url}/v1/feedback", json={"image": image, "label": str(i % 10),
                                                                  "idempotency_key": f"k{i}"}, timeout=10)
            except httpx.TransportError:
                return  # the server died mid-request: not acknowledged
            if response.status_code == 201:
                acknowledged.append(f"k{i}")

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, i) for i in range(400)]
            deadline = time.monotonic() + 60
            while len(acknowledged) < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
            process.kill()  # SIGKILL: no shutdown code runs
            for future in futures:
                future.result()
    finally:
        process.kill()
        process.wait()
    with sqlite3.connect(db) as check:  # opening recovers the WAL
        stored = {key for (key,) in check.execute("SELECT idempotency_key FROM feedback")}
    assert len(acknowledged) >= 40 and set(acknowledged) <= stored


def test_explain_endpoint_and_the_deadline(mnist_run, digits):
    png = digits[1][0].read_bytes()
    with (serving(mnist_run, feedback_db=None) as url, httpx.Client(base_url=url) as client):
        overlay = client.post("/v1/explain", files={"file": png})
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
        assert overlay.headers["x-explained-class"] == "7"
        with Image.open(io.BytesIO(overlay.content)) as picture:
            assert np.asarray(picture.convert("L")).std() > 10  # a drawn heatmap, not a blank image
        other = client.post("/v1/explain", params={"method": "saliency", "target": "3"}, files={"file": png})
        assert other.headers["x-explained-class"] == "3"
        assert client.post("/v1/explain", params={"method": "lime"}, files={"file": png}).status_code == 422
    with (serving(mnist_run, feedback_db=None, deadline_ms=0.001) as url, httpx.Client(base_url=url) as client):
        late = client.post("/v1/predict", files={"file": png})  # past its deadline once decoded: never queued
        assert late.status_code == 504 and "no answer within 0.001 ms" in late.json()["error"]
