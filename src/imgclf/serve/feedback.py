"""The feedback store: corrected labels with their images, in a SQLite file (the default) or PostgreSQL (shared by
several serving replicas). One committed transaction per write; the schema is created and migrated in code."""

from __future__ import annotations

import hashlib
import io
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
        BigInteger,
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
        delete,
        event,
        func,
        inspect,
        select,
        text,
        update,
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
# a uniform sample of the images the server classified (imgclf serve --keep-unlabelled N), for people to label
KEPT = Table(
    "kept", _TABLES,
    Column("slot", Integer, primary_key=True, autoincrement=False),  # its place in the sample, 0 to N - 1
    Column("prediction_id", Text, nullable=False, unique=True),
    Column("created", Float, nullable=False),
    Column("predicted", Text, nullable=False),  # what the model said
    Column("probability", Float, nullable=False),  # of the predicted class
    Column("margin", Float, nullable=False),  # top-1 minus top-2 probability: small, the model hesitated
    Column("unknown_score", Float),  # how unlike the training data the image is, when the server scores that
    Column("model_version", Text, nullable=False),
    Column("image_sha256", Text, nullable=False),
    Column("image", LargeBinary, nullable=False),  # the bytes as uploaded
    Column("inverted", Integer, nullable=False, server_default="0"))  # the server inverted it (--invert)
SEEN = Table("kept_seen", _TABLES, Column("id", Integer, primary_key=True, autoincrement=False),
             Column("seen", BigInteger, nullable=False))  # one row: the images offered to the sample, ever
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


def _kept_sample(db: Connection) -> None:
    """The tables of the kept sample, empty, with nothing seen yet."""
    KEPT.create(db)
    SEEN.create(db)
    db.execute(SEEN.insert().values(id=1, seen=0))


# MIGRATIONS[i] takes a database from schema version i to i + 1. Version 1 is the first table (SQLite files
# written before versions were recorded have it already). Append new steps; never change old ones.
MIGRATIONS: list[Callable[[Connection], None]] = [lambda db: FEEDBACK.create(db, checkfirst=True),
                                                  _one_correction_per_prediction, _kept_sample]


class StoreError(ImgclfError):
    """The feedback database cannot be reached or written right now."""


class StoreFull(ImgclfError):
    """The feedback database holds as many rows or image bytes as this store was allowed."""


class Stored(NamedTuple):
    new: bool  # False: the idempotency key or prediction was seen before and nothing was written
    label: str  # the label stored under the key or for the prediction
    clash: str | None = None  # when not new: "idempotency_key" or "prediction_id", what the earlier row shares


@dataclass(frozen=True)
class Kept:
    """A classified image offered to the kept sample, with what the model said of it."""

    prediction_id: str
    image: bytes
    predicted: str
    probability: float
    margin: float
    unknown_score: float | None
    model_version: str
    inverted: bool


@dataclass(frozen=True)
class Queued:
    """A kept image waiting for its label (without its bytes)."""

    prediction_id: str
    predicted: str
    probability: float
    margin: float
    unknown_score: float | None
    model_version: str
    created: float


QUEUE_ORDERS = ("margin", "unknown")  # least margin first; highest unknown score first (unscored ones last)


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
        self.random, self.warned_full = random.Random(), False  # which images the kept sample takes
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

    def keep(self, entries: list[Kept], size: int) -> int:
        """Offer classified images to the kept sample of at most `size` (one transaction); returns how many went
        in. Reservoir sampling (Vitter's algorithm R): the n-th image offered, counted over every process and
        restart, takes a random slot with probability size / n, so the sample stays uniform over all the images
        and never holds more than `size`. Images beyond the store's byte cap are not kept (logged once)."""
        try:
            with self.engine.begin() as db:  # the counter's row lock (the SQLite write lock) orders the writers
                seen = db.execute(update(SEEN).values(seen=SEEN.c.seen + len(entries)).returning(SEEN.c.seen)
                                  ).scalar() - len(entries)
                db.execute(delete(KEPT).where(KEPT.c.slot >= size))  # started with a smaller size than before
                return sum(self._into_slot(db, entry, n if n < size else self.random.randrange(n + 1), size)
                           for n, entry in enumerate(entries, start=seen))
        except SQLAlchemyError as err:
            raise StoreError(f"images not kept in {self.where}: {_reason(err)}") from err

    def _into_slot(self, db: Connection, entry: Kept, slot: int, size: int) -> bool:
        """Put `entry` into `slot` of the sample, replacing the image there, unless the slot is beyond `size` (the
        image is not sampled) or its bytes would pass the store's cap."""
        if slot >= size:
            return False
        replaced = db.execute(select(func.length(KEPT.c.image)).where(KEPT.c.slot == slot)).scalar() or 0
        if not self._room_for(len(entry.image) - replaced):
            return False
        row = {"slot": slot, "prediction_id": entry.prediction_id, "created": time.time(),
               "predicted": entry.predicted, "probability": entry.probability, "margin": entry.margin,
               "unknown_score": entry.unknown_score, "model_version": entry.model_version,
               "image_sha256": hashlib.sha256(entry.image).hexdigest(), "image": entry.image,
               "inverted": int(entry.inverted)}
        insert = self._insert(KEPT).values(row)
        db.execute(insert.on_conflict_do_update(index_elements=[KEPT.c.slot],
                                                set_={k: insert.excluded[k] for k in row if k != "slot"}))
        return True

    def _room_for(self, size: int) -> bool:
        """Count `size` more image bytes (negative: fewer) if they fit under the byte cap."""
        with self._counting:
            if size > 0 and self.max_bytes and self.bytes + size > self.max_bytes:
                if not self.warned_full:
                    self.warned_full = True
                    log.warning("the feedback store holds %.1f MiB of images, its cap: no more images are kept "
                                "for labelling", self.bytes / 2**20)
                return False
            self.bytes += size
            return True

    def kept(self, prediction_id: str) -> Kept | None:
        """The kept image of a prediction, if the sample holds it."""
        try:
            with self.engine.connect() as db:
                row = db.execute(select(KEPT).where(KEPT.c.prediction_id == prediction_id)).first()
        except SQLAlchemyError as err:
            raise StoreError(f"cannot read {self.where}: {_reason(err)}") from err
        return None if row is None else Kept(row.prediction_id, row.image, row.predicted, row.probability,
                                             row.margin, row.unknown_score, row.model_version, bool(row.inverted))

    def queue(self, by: str = "margin", limit: int = 20) -> list[Queued]:
        """The kept images without a correction, those whose label would help most first (see queue())."""
        try:
            with self.engine.connect() as db:
                return _queue(db, by, limit)
        except SQLAlchemyError as err:
            raise StoreError(f"cannot read {self.where}: {_reason(err)}") from err

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
        """The corrections and the image bytes (theirs and the kept sample's) in the database (one scan, when the
        store opens)."""
        with self.engine.connect() as db:
            rows, size = db.execute(select(func.count(), func.coalesce(func.sum(func.length(FEEDBACK.c.image)), 0))
                                    .select_from(FEEDBACK)).one()
            kept = db.execute(select(func.coalesce(func.sum(func.length(KEPT.c.image)), 0))).scalar()
        return rows, size + kept

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


def _queue(db: Connection, by: str, limit: int) -> list[Queued]:
    """The kept images no correction names, those whose label would help most first: by "margin", the ones the
    model hesitated over most; by "unknown", the ones least like its training data (images without an unknown
    score last, by margin)."""
    if by not in QUEUE_ORDERS:
        raise ImgclfError(f"the queue is ordered by {' or '.join(QUEUE_ORDERS)}, not {by!r}.")
    corrected = select(FEEDBACK.c.id).where(FEEDBACK.c.prediction_id == KEPT.c.prediction_id).exists()
    order = [KEPT.c.margin] if by == "margin" else [KEPT.c.unknown_score.desc().nulls_last(), KEPT.c.margin]
    rows = db.execute(select(KEPT.c.prediction_id, KEPT.c.predicted, KEPT.c.probability, KEPT.c.margin,
                             KEPT.c.unknown_score, KEPT.c.model_version, KEPT.c.created)
                      .where(~corrected).order_by(*order, KEPT.c.created, KEPT.c.slot).limit(limit))
    return [Queued(*row) for row in rows]


def _has_kept(db: Connection, path: str | Path) -> Connection:
    """`db`, checked to have the kept sample's table (a database that no imgclf with it has opened has none)."""
    if not inspect(db).has_table(KEPT.name):
        raise ImgclfError(f"{without_password(path)} has no kept images: it was written by an older imgclf; serve "
                          "with it again and --keep-unlabelled N to keep some.")
    return db


def queue(path: str | Path, by: str = "margin", limit: int = 20) -> list[Queued]:
    """The labelling queue of a feedback database: at most `limit` kept images without a correction, those whose
    label would help most first (by "margin" or "unknown")."""
    with _reading(path) as db:
        return _queue(_has_kept(db, path), by, limit)


def _write_image(folder: Path, name: str, image: bytes, inverted: bool) -> None:
    """An image as folder/<name>.<format>, as the model saw it: a dark-on-light photo the server inverted is written
    inverted (as PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    if inverted:
        with Image.open(io.BytesIO(image)) as picture:
            pixels = 255 - image_to_tensor(picture).permute(1, 2, 0)  # (H, W, C), as serving reads it
        Image.fromarray(pixels.squeeze(-1).numpy() if pixels.shape[-1] == 1 else pixels.numpy()).save(
            folder / f"{name}.png")
    else:
        with Image.open(io.BytesIO(image)) as picture:
            suffix = (picture.format or "png").lower().replace("jpeg", "jpg")
        (folder / f"{name}.{suffix}").write_bytes(image)


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
            _write_image(out / label, str(row_id), image, bool(inverted))
            count += 1
    return count


def export_unlabelled(path: str | Path, out: str | Path) -> int:
    """Write the kept images no correction names into out/<prediction_id>.<format>, a plain folder of unlabelled
    images; returns how many."""
    count = 0
    with _reading(path) as db:
        corrected = select(FEEDBACK.c.id).where(FEEDBACK.c.prediction_id == KEPT.c.prediction_id).exists()
        for prediction_id, image, inverted in _has_kept(db, path).execute(
                select(KEPT.c.prediction_id, KEPT.c.image, KEPT.c.inverted).where(~corrected).order_by(KEPT.c.slot)):
            if not is_plain_name(prediction_id):
                raise ImgclfError(f"a kept image has the prediction_id {prediction_id!r}, which cannot be a file name.")
            _write_image(Path(out), prediction_id, image, bool(inverted))
            count += 1
    return count
