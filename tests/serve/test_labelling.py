"""Labelling what matters: the kept sample of classified images (serve --keep-unlabelled), its queue by margin
or unknown score (imgclf feedback queue, GET /v1/queue) and its export as a plain folder."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from serving_helpers import encode, serving

from imgclf.cli import main
from imgclf.errors import ImgclfError
from imgclf.serve.app import ServeConfig
from imgclf.serve.feedback import FEEDBACK, FeedbackStore, Kept, engine_for, queue

PNG = encode(np.full((28, 28), 200, dtype=np.uint8))


def test_the_queue_puts_the_least_margin_first_and_drops_labelled_images(tmp_path, capsys):
    db = tmp_path / "feedback.db"
    store = FeedbackStore(db)
    try:
        store.keep([Kept(f"p{i}", PNG, "7", 0.5 + margin / 2, margin, unknown, "v1", False) for i, (margin, unknown)
                    in enumerate([(0.4, None), (0.05, 2.0), (0.9, 7.5), (0.2, None)])], 10)
        store.add("1", PNG, predicted="7", prediction_id="p3")  # labelled: it leaves the queue
    finally:
        store.close()
    assert [q.prediction_id for q in queue(db)] == ["p1", "p0", "p2"]
    assert [q.prediction_id for q in queue(db, by="unknown", limit=2)] == ["p2", "p1"]  # unscored images last
    assert main(["feedback", "queue", str(db), "--by", "unknown", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(q["prediction_id"], q["unknown_score"]) for q in listed] == [("p2", 7.5), ("p1", 2.0), ("p0", None)]
    assert main(["feedback", "queue", str(db), "--limit", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 and table[1].split() == ["p1", "7", "0.525", "0.050", "2.000"]
    assert main(["feedback", "export", str(db), "--out", str(tmp_path / "unlabelled"), "--unlabelled"]) == 0
    assert sorted(p.name for p in (tmp_path / "unlabelled").iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert (tmp_path / "unlabelled" / "p0.png").read_bytes() == PNG


def queued(client: httpx.Client, count: int) -> list[dict]:
    """The server's queue once it lists `count` images (the kept sample is written after the answers)."""
    deadline = time.monotonic() + 30
    while len(listed := client.get("/v1/queue").json()["queue"]) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return listed


def test_a_server_keeps_a_bounded_sample_that_stays_labellable_after_recent_predictions_are_forgotten(
        mnist_run, mnist, tmp_path):
    digits = [encode(mnist.splits["test"].images[i, 0].numpy()) for i in range(6)]
    token = {"authorization": "Bearer t0ken"}
    with (serving(mnist_run, feedback_db=str(tmp_path / "f.db"), keep_unlabelled=3, remember=1,
                  feedback_token="t0ken", unknown=True) as url, httpx.Client(base_url=url, headers=token) as client):
        answers = [client.post("/v1/predict", content=d, headers={"content-type": "image/png"}).json()
                   for d in digits]
        listed = queued(client, 3)
        assert len(listed) == 3 and [q["margin"] for q in listed] == sorted(q["margin"] for q in listed)
        said = {a["prediction_id"]: a for a in answers}
        first = listed[0]
        top = said[first["prediction_id"]]["top"]
        assert first["predicted"] == top[0]["label"]
        assert first["unknown_score"] == pytest.approx(said[first["prediction_id"]]["unknown_score"])
        by_unknown = [q["unknown_score"] for q in client.get("/v1/queue", params={"by": "unknown"}).json()["queue"]]
        assert by_unknown == sorted(by_unknown, reverse=True) and None not in by_unknown
        assert first["margin"] == pytest.approx(top[0]["probability"] - top[1]["probability"])
        image = client.get(f"/v1/queue/{first['prediction_id']}/image")
        assert image.headers["content-type"] == "image/png" and image.content in digits
        assert httpx.get(f"{url}/v1/queue").status_code == 401  # users' images: the feedback token is needed
        # the recent store remembers only the last prediction; a kept one is still labelled by its id
        corrected = client.post("/v1/feedback", json={"prediction_id": first["prediction_id"], "label": "3"})
        assert corrected.status_code == 201 and corrected.json()["predicted"] == first["predicted"]
        assert first["prediction_id"] not in [q["prediction_id"] for q in client.get("/v1/queue").json()["queue"]]
        assert client.get("/v1/queue", params={"by": "size"}).status_code == 422


def test_keeping_images_needs_a_feedback_database(mnist_run, capsys):
    with pytest.raises(ImgclfError, match="--feedback-db PATH"):
        ServeConfig(keep_unlabelled=5)
    assert main(["serve", str(mnist_run), "--keep-unlabelled", "5", "--feedback-db", ""]) == 1
    assert "keeping images for labelling (--keep-unlabelled) stores them in the feedback database" in (
        capsys.readouterr().err)


def test_a_database_from_before_the_kept_sample_gets_one_clear_sentence(tmp_path, capsys):
    engine = engine_for(tmp_path / "old.db")
    FEEDBACK.create(engine)  # the first schema: corrections only
    engine.dispose()
    for command in (["queue"], ["export", "--out", str(tmp_path / "out"), "--unlabelled"]):
        assert main(["feedback", command[0], str(tmp_path / "old.db"), *command[1:]]) == 1
        assert "has no kept images: it was written by an older imgclf" in capsys.readouterr().err
