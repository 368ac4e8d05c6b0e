"""The feedback store: corrected labels with their images, in a SQLite file (the default) or PostgreSQL (shared by
several serving replicas). One committed transaction per write; the schema is created and migrated in code."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from PIL import Image

from imgclf.data.transforms import image_to_tensor
from imgclf.database import database_url, without_password
from imgclf.errors import ImgclfError, first_line
from imgclf.files import is_plain_name

try:
    from sqlalchemy import (
        Column,
        Connection,
        Engine,
        Float,
        Integer,
        LargeBinary,
        MetaData,
        Table,
        Text,
        create_engine,
        event,
        func,
        select,
        text,
    )
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
except ImportError as err:  # feedback stats/export and retrain run without the server, but need this
    raise ImgclfError("the feedback store needs SQLAlchemy: pip install 'imgclf[serve]'.") from err

log = logging.getLogger(__name__)

_TABLES = MetaData()
FEEDBACK = Table(
    "feedback", _TABLES,
    Column("id", Integer, primary_key=True),
    Column("created", Float, nullable=False),
    Column("label", Text, nullable=False),  # the corrected (true) label
    Column("predicted", Text),  # what the model said, when the feedback names a prediction
    Column("prediction_id", Text),
    Column("model_version", Text),
    Column("image_sha256", Text, nullable=False),
    Column("image", LargeBinary, nullable=False),  # the bytes as uploaded
    Column("inverted", Integer, nullable=False, server_default="0"),  # the server inverted it (--invert)
    Column("idempotency_key", Text, unique=True),
    sqlite_autoincrement=True)
SCHEMA_VERSION = Table("imgclf_schema", _TABLES, Column("version", Integer, primary_key=True),
                       Column("applied", Float, nullable=False))


def _one_correction_per_prediction(db: Connection) -> None:
    """A unique index on prediction_id (where there is one): one correction per prediction, across replicas and
    restarts. Later rows an older server stored for an already corrected prediction move to feedback_repeats:
    kept, but no longer exported or trained on (the earliest correction stands, as the index will have it)."""
    later = ("prediction_id IS NOT NULL AND id > (SELECT MIN(earlier.id) FROM feedback AS earlier "
             "WHERE earlier.prediction_id = feedback.prediction_id)")
    db.execute(text(f"CREATE TABLE feedback_repeats AS SELECT * FROM feedback WHERE {later}"))
    moved = db.execute(text(f"DELETE FROM feedback WHERE {later}")).rowcount
    if moved:
        log.warning("moved %d repeated corrections of the same predictions to the table feedback_repeats", moved)
    db.execute(text("CREATE UNIQUE INDEX feedback_prediction_id ON feedback (prediction_id) "
                    "WHERE prediction_id IS NOT NULL"))


# MIGRATIONS[i] takes a database from schema version i to i + 1. Version 1 is the first table (SQLite files
# written before versions were recorded have it already). Append new steps; never change old ones.
MIGRATIONS: list[Callable[[Connection], None]] = [lambda db: FEEDBACK.create(db, checkfirst=True),
                                                  _one_correction_per_prediction]


class StoreError(ImgclfError):
    """The feedback database cannot be reached or written right now."""


class StoreFull(ImgclfError):
    """The feedback database holds as many rows or image bytes as this store was allowed."""


class Stored(NamedTuple):
    new: bool  # False: the idempotency key or prediction was seen before and nothing was written
    label: str  # the label stored under the key or for the prediction
    clash: str | None = None  # when not new: "idempotency_key" or "prediction_id", what the earlier row shares


def engine_for(target: str | Path, *, read_only: bool = False) -> Engine:
    """An engine for a feedback database: a SQLite file's path, or a URL (sqlite:///PATH, postgresql://USER@HOST/DB).
    A read-only SQLite engine needs the file to exist; a writing one creates it (WAL, synced commits)."""
    name = str(target)
    if "://" not in name:
        path = Path(name)
        if read_only and not path.is_file():
            raise ImgclfError(f"there is no feedback database {path}; imgclf serve writes it (--feedback-db).")
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        name = f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true" if read_only else f"sqlite:///{path}"
    try:
        url = make_url(database_url(name))
    except ArgumentError as err:
        raise ImgclfError(f"{without_password(target)} is neither a file path nor a database URL.") from err
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ImgclfError(f"the feedback database must be SQLite or PostgreSQL, not {url.get_backend_name()}.")
    try:
        engine = create_engine(url, pool_pre_ping=True, connect_args={  # seconds to wait for a lock, or a server
            "timeout" if url.get_backend_name() == "sqlite" else "connect_timeout": 10})
    except ImportError as err:
        raise ImgclfError(f"{url.render_as_string(hide_password=True)} needs a database driver that is not "
                          f"installed ({err}); pip install 'imgclf[postgres]'.") from err
    if engine.dialect.name == "sqlite" and not read_only:
        event.listen(engine, "connect", _sqlite_settings)
        # the driver's own transaction handling is off (above); take the write lock at BEGIN, so concurrent
        # writers queue on the busy timeout instead of failing to upgrade a read lock
        event.listen(engine, "begin", lambda db: db.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _sqlite_settings(connection, _record) -> None:
    connection.isolation_level = None
    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise ImgclfError(f"the feedback database cannot use SQLite's WAL mode (it is in {mode} mode); put it on "
                          "a local disk.")
    connection.execute("PRAGMA synchronous=FULL")  # a 2xx means the row survives a crash or power loss


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def migrate(engine: Engine) -> int:
    """Bring the database to the latest schema (one process at a time); returns the version it is at."""
    with engine.begin() as db:
        if db.dialect.name == "postgresql":  # replicas starting together: the others wait here
            db.execute(select(func.pg_advisory_xact_lock(0x1D6C1F)))
        SCHEMA_VERSION.create(db, checkfirst=True)
        version = db.execute(select(func.max(SCHEMA_VERSION.c.version))).scalar() or 0
        if version > len(MIGRATIONS):
            raise ImgclfError(f"{_where(engine)} has feedback schema version {version}, newer than this imgclf "
                              f"knows ({len(MIGRATIONS)}); upgrade imgclf.")
        for number in range(version, len(MIGRATIONS)):
            MIGRATIONS[number](db)
            db.execute(SCHEMA_VERSION.insert().values(version=number + 1, applied=time.time()))
    return len(MIGRATIONS)


class FeedbackStore:
    """Thread-safe, and safe to share between processes and replicas; every add is committed (and synced)
    before it returns."""

    def __init__(self, target: str | Path, *, max_rows: int | None = None, max_bytes: int | None = None) -> None:
        """`max_rows`, `max_bytes`: a cap on the rows and image bytes the database may hold, checked against a
        count taken when the store opens plus the rows this store adds (other writers are not seen)."""
        self.engine = engine_for(target)
        self.where = _where(self.engine)
        self.max_rows, self.max_bytes, self._counting = max_rows, max_bytes, threading.Lock()
        try:
            migrate(self.engine)
            self.rows, self.bytes = self._size() if max_rows or max_bytes else (0, 0)
        except DBAPIError as err:
            self.engine.dispose()
            raise StoreError(f"cannot open the feedback database {self.where}: {_reason(err)}") from err
        except BaseException:
            self.engine.dispose()
            raise
        self._insert = (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert

    def add(self, label: str, image: bytes, *, predicted: str | None = None, prediction_id: str | None = None,
            model_version: str | None = None, inverted: bool = False,
            idempotency_key: str | None = None) -> tuple[int, Stored]:
        """Store one correction in its own transaction; returns its row id and whether it is new. A repeated
        idempotency key or prediction_id stores nothing and returns the earlier row and its label; a new row
        beyond the store's cap raises StoreFull."""
        row = {"created": time.time(), "label": label, "predicted": predicted, "prediction_id": prediction_id,
               "model_version": model_version, "image_sha256": hashlib.sha256(image).hexdigest(), "image": image,
               "inverted": int(inverted), "idempotency_key": idempotency_key}
        insert = self._insert(FEEDBACK).values(row).on_conflict_do_nothing().returning(FEEDBACK.c.id)
        try:
            with self.engine.begin() as db:
                row_id = db.execute(insert).scalar()
                if row_id is None:  # a unique column clashed: the idempotency key, or the prediction_id
                    return self._earlier(db, idempotency_key, prediction_id)
                self._count(len(image))  # raises StoreFull, which rolls the insert back
                return row_id, Stored(True, label)
        except SQLAlchemyError as err:  # the database is down, locked for too long, or the pool is exhausted
            raise StoreError(f"feedback not stored in {self.where}: {_reason(err)}") from err

    def _earlier(self, db: Connection, idempotency_key: str | None, prediction_id: str | None) -> tuple[int, Stored]:
        """The row an insert clashed with: the one with its idempotency key, else the one with its prediction_id."""
        for column, value in ((FEEDBACK.c.idempotency_key, idempotency_key),
                              (FEEDBACK.c.prediction_id, prediction_id)):
            earlier = None if value is None else db.execute(
                select(FEEDBACK.c.id, FEEDBACK.c.label).where(column == value)).first()
            if earlier is not None:
                return earlier.id, Stored(False, earlier.label, column.name)
        raise StoreError(f"feedback not stored in {self.where}: it clashed with a row that is gone")

    def _size(self) -> tuple[int, int]:
        """The rows and image bytes in the database (one scan, when the store opens)."""
        with self.engine.connect() as db:
            rows, size = db.execute(select(func.count(), func.coalesce(func.sum(func.length(FEEDBACK.c.image)), 0))
                                    .select_from(FEEDBACK)).one()
        return rows, size

    def _count(self, size: int) -> None:
        """Count one more row of `size` image bytes, or raise StoreFull if it would go beyond the cap (a commit
        that then fails leaves the count one row high: the cap errs on the safe side)."""
        with self._counting:
            if self.max_rows and self.rows >= self.max_rows:
                raise StoreFull(f"the feedback store is full: it holds {self.rows:,} corrections, the most it takes.")
            if self.max_bytes and self.bytes + size > self.max_bytes:
                raise StoreFull(f"the feedback store is full: it holds {self.bytes / 2**20:,.1f} MiB of images and "
                                f"takes at most {self.max_bytes / 2**20:,.1f} MiB.")
            self.rows, self.bytes = self.rows + 1, self.bytes + size

    def close(self) -> None:
        self.engine.dispose()


def _reason(err: SQLAlchemyError) -> str:
    """The first line of the database driver's own message (SQLAlchemy wraps it in lines of its own)."""
    return first_line(getattr(err, "orig", None) or err)


@contextmanager
def _reading(target: str | Path) -> Iterator[Connection]:
    """A connection for reading a feedback database (a SQLite file is opened read-only)."""
    engine = engine_for(target, read_only=True)
    try:
        with engine.connect() as db:
            db.execute(select(func.count()).select_from(FEEDBACK))
            yield db
    except DBAPIError as err:
        raise ImgclfError(f"cannot read {_where(engine)} as an imgclf feedback database ({_reason(err)}).") from err
    finally:
        engine.dispose()


def stats(path: str | Path) -> dict:
    """Counts, corrections per label and the most common (predicted -> corrected) pairs of a feedback database;
    `unscored` rows have no prediction (images sent with a correction to servers before imgclf scored them)."""
    with _reading(path) as db:
        def query(sql: str) -> list:
            return [tuple(row) for row in db.execute(text(sql))]

        total = query("SELECT COUNT(*) FROM feedback")[0][0]
        per_label = dict(query("SELECT label, COUNT(*) FROM feedback GROUP BY label ORDER BY label"))
        confusions = [{"predicted": p, "label": t, "count": n} for p, t, n in query(
            "SELECT predicted, label, COUNT(*) AS n FROM feedback WHERE predicted IS NOT NULL AND predicted != label "
            "GROUP BY predicted, label ORDER BY n DESC, predicted, label LIMIT 10")]
        agreed = query("SELECT COUNT(*) FROM feedback WHERE predicted = label")[0][0]
        unscored = query("SELECT COUNT(*) FROM feedback WHERE predicted IS NULL")[0][0]
        versions = dict(query("SELECT model_version, COUNT(*) FROM feedback GROUP BY model_version"))
    return {"feedback": total, "per_label": per_label, "confirmed": agreed, "confusions": confusions,
            "unscored": unscored, "model_versions": versions}


def export(path: str | Path, out: str | Path) -> int:
    """Write every feedback image into out/<label>/<id>.<format>, a folder `imgclf train --dataset folder:` reads;
    returns how many."""
    out = Path(out)
    count = 0
    with _reading(path) as db:
        for row_id, label, image, inverted in db.execute(
                select(FEEDBACK.c.id, FEEDBACK.c.label, FEEDBACK.c.image, FEEDBACK.c.inverted).order_by(FEEDBACK.c.id)):
            if not is_plain_name(label):
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
