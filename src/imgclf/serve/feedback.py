"""The feedback store: corrected labels with their images, in SQLite (WAL, one committed transaction per write)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

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
