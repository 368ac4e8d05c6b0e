"""What a prediction id refers to: the image and the answer of each recent prediction, in a SQLite file that the
worker processes of one server share. Scratch, not a record: it is not synced, and the server removes it."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Remembered:
    """An image the model scored: what a prediction id refers to, or an image sent with its correction."""

    image: bytes
    predicted: str
    version: str
    inverted: bool


class Recent:
    """The last `keep` predictions within `keep_bytes` of images (the byte bound is applied once a second, so it
    may be passed by a second's worth of images). Thread-safe; any number of processes may share the file."""

    def __init__(self, path: str | Path, keep: int, keep_bytes: int) -> None:
        self.path, self.keep, self.keep_bytes = str(path), keep, keep_bytes
        self.local = threading.local()  # a sqlite3 connection belongs to the thread that opened it
        self.weighed = 0.0  # when the byte bound was last applied
        self._db().execute("CREATE TABLE IF NOT EXISTS recent (seq INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, "
                           "image BLOB NOT NULL, size INTEGER NOT NULL, predicted TEXT NOT NULL, "
                           "version TEXT NOT NULL, inverted INTEGER NOT NULL)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self.local, "db", None)
        if db is None:
            db = self.local.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
        return db

    def add(self, entries: list[tuple[str, Remembered]]) -> None:
        """Keep these predictions (one transaction), forgetting the oldest beyond the bounds."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO recent (id, image, size, predicted, version, inverted) "
                           "VALUES (?, ?, ?, ?, ?, ?)", [(key, e.image, len(e.image), e.predicted, e.version,
                                                          int(e.inverted)) for key, e in entries])
            db.execute("DELETE FROM recent WHERE seq <= (SELECT MAX(seq) FROM recent) - ?", (self.keep,))
            if time.monotonic() - self.weighed > 1:
                self.weighed = time.monotonic()
                db.execute("DELETE FROM recent WHERE seq <= (SELECT seq FROM (SELECT seq, SUM(size) OVER (ORDER BY seq "
                           "DESC) AS total FROM recent) WHERE total > ? ORDER BY seq DESC LIMIT 1)", (self.keep_bytes,))

    def get(self, key: str) -> Remembered | None:
        row = self._db().execute("SELECT image, predicted, version, inverted FROM recent WHERE id = ?",
                                 (key,)).fetchone()
        return Remembered(row[0], row[1], row[2], bool(row[3])) if row else None
