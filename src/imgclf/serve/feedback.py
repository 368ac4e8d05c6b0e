"""The feedback store: corrected labels with their images, in SQLite (WAL, one committed transaction per write)."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from imgclf.data.transforms import image_to_tensor
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
    inverted INTEGER NOT NULL DEFAULT 0,  -- the server inverted it before the model saw it (--invert)
    idempotency_key TEXT UNIQUE
);
"""


class Stored(NamedTuple):
    new: bool  # False: the idempotency key was seen before and nothing was written
    label: str  # the label stored under the key


class FeedbackStore:
    """Thread-safe, and safe to share between processes (SQLite locking); every add is committed, and synced,
    before it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise ImgclfError(f"{self.path} cannot use SQLite's WAL mode (it is in {mode} mode); put the feedback "
                              "database on a local disk.")
        self.db.execute("PRAGMA synchronous=FULL")  # a 2xx means the row survives a crash or power loss
        self.db.executescript(SCHEMA)

    def add(self, label: str, image: bytes, *, predicted: str | None = None, prediction_id: str | None = None,
            model_version: str | None = None, inverted: bool = False,
            idempotency_key: str | None = None) -> tuple[int, Stored]:
        """Store one correction in its own transaction; returns its row id and whether it is new. A repeated
        idempotency key stores nothing and returns the first row and its label."""
        with self.lock:
            cursor = self.db.execute(
                "INSERT INTO feedback (created, label, predicted, prediction_id, model_version, image_sha256, image, "
                "inverted, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(idempotency_key) DO NOTHING",
                (time.time(), label, predicted, prediction_id, model_version, hashlib.sha256(image).hexdigest(),
                 image, int(inverted), idempotency_key))
            if cursor.rowcount == 1:
                return cursor.lastrowid, Stored(True, label)
            row_id, first = self.db.execute("SELECT id, label FROM feedback WHERE idempotency_key = ?",
                                            (idempotency_key,)).fetchone()
            return row_id, Stored(False, first)

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
        for row_id, label, image, inverted in db.execute("SELECT id, label, image, inverted FROM feedback ORDER BY id"):
            if label in ("", ".", "..") or "/" in label or "\\" in label:
                raise ImgclfError(f"feedback row {row_id} has the label {label!r}, which cannot be a folder name.")
            folder = out / label
            folder.mkdir(parents=True, exist_ok=True)
            if inverted:  # as the model saw it: a dark-on-light photo the server inverted
                with Image.open(io.BytesIO(image)) as picture:
                    pixels = 255 - image_to_tensor(picture).permute(1, 2, 0)  # (H, W, C), as serving reads it
                Image.fromarray(pixels.squeeze(-1).numpy() if pixels.shape[-1] == 1 else pixels.numpy()).save(
                    folder / f"{row_id}.png")
            else:
                with Image.open(io.BytesIO(image)) as picture:
                    suffix = (picture.format or "png").lower().replace("jpeg", "jpg")
                (folder / f"{row_id}.{suffix}").write_bytes(image)
            count += 1
    return count
