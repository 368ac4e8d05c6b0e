"""The feedback store: corrected labels with their images, in SQLite (WAL, one committed transaction per write)."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

from PIL import Image

from imgclf.errors import ImgclfError

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    label TEXT NOT NULL,             -- the corrected (true) label
    predicted TEXT,                  -- what the model said, when the feedback names a prediction
    prediction_id TEXT,
    model_version TEXT,
    image_sha256 TEXT NOT NULL,
    image BLOB NOT NULL,             -- the bytes as uploaded
    idempotency_key TEXT UNIQUE
);
"""


class FeedbackStore:
    """Thread-safe; every add is committed (and synced to the WAL) before it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a 2xx means the row survives a crash or power loss
        self.db.executescript(SCHEMA)

    def add(self, label: str, image: bytes, *, predicted: str | None = None, prediction_id: str | None = None,
            model_version: str | None = None, idempotency_key: str | None = None) -> tuple[int, bool]:
        """Store one correction; returns (row id, whether it is new). A repeated idempotency key returns the
        first row and stores nothing."""
        with self.lock:
            if idempotency_key is not None:
                row = self.db.execute("SELECT id FROM feedback WHERE idempotency_key = ?",
                                      (idempotency_key,)).fetchone()
                if row:
                    return row[0], False
            cursor = self.db.execute(
                "INSERT INTO feedback (created, label, predicted, prediction_id, model_version, image_sha256, image, "
                "idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), label, predicted, prediction_id, model_version, hashlib.sha256(image).hexdigest(),
                 image, idempotency_key))
            return cursor.lastrowid, True

    def count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _open(path: str | Path) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise ImgclfError(f"there is no feedback database {path}; imgclf serve writes it (--feedback-db).")
    try:
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        db.execute("SELECT COUNT(*) FROM feedback")
    except sqlite3.DatabaseError as err:
        raise ImgclfError(f"{path} is not an imgclf feedback database ({err}).") from err
    return db


def stats(path: str | Path) -> dict:
    """Counts, corrections per label and the most common (predicted -> corrected) pairs of a feedback database."""
    with closing(_open(path)) as db:
        total = db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        per_label = dict(db.execute("SELECT label, COUNT(*) FROM feedback GROUP BY label ORDER BY label"))
        confusions = [{"predicted": p, "label": t, "count": n} for p, t, n in db.execute(
            "SELECT predicted, label, COUNT(*) AS n FROM feedback WHERE predicted IS NOT NULL AND predicted != label "
            "GROUP BY predicted, label ORDER BY n DESC, predicted, label LIMIT 10")]
        agreed = db.execute("SELECT COUNT(*) FROM feedback WHERE predicted = label").fetchone()[0]
        versions = dict(db.execute("SELECT model_version, COUNT(*) FROM feedback GROUP BY model_version"))
    return {"feedback": total, "per_label": per_label, "confirmed": agreed, "confusions": confusions,
            "model_versions": versions}


def export(path: str | Path, out: str | Path) -> int:
    """Write every feedback image into out/<label>/<id>.<format>, a folder `imgclf train --dataset folder:` reads;
    returns how many."""
    out = Path(out)
    count = 0
    with closing(_open(path)) as db:
        for row_id, label, image in db.execute("SELECT id, label, image FROM feedback ORDER BY id"):
            with Image.open(io.BytesIO(image)) as picture:
                suffix = (picture.format or "png").lower().replace("jpeg", "jpg")
            if label in ("", ".", "..") or "/" in label or "\\" in label:
                raise ImgclfError(f"feedback row {row_id} has the label {label!r}, which cannot be a folder name.")
            folder = out / label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{row_id}.{suffix}").write_bytes(image)
            count += 1
    return count
