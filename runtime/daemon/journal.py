"""The verdict journal: SQLite in WAL mode, one row per frame received, per verdict, per pending frame.

Order of writes for one frame (each a committed transaction before the step after it):
    ingress    frames(received)                    -> then the ack is sent
    publisher  verdicts(edge) [+ pending row]      -> then the edge verdict is published
    publisher  verdicts(teacher / unreachable), pending row deleted -> then it is published

Durability: WAL with ``synchronous=NORMAL`` makes every committed transaction survive the death of the
process (kill -9, OOM, segfault): the commit is in the WAL file in the OS page cache and is replayed on
the next open. It does not fsync per commit, so a power cut may lose the last few commits (never
corrupts). ``FULL`` adds an fsync per commit: power-cut safe, but ~1-10 ms per commit on the eMMC/SD
storage of an edge box, more than the whole inference budget. Writes are grouped (one transaction per
batch the publisher drains), so FULL costs one fsync per batch, not per frame.

Two SQLite files, so the two writer threads never wait on each other's lock (SQLite's busy handler
sleeps in steps of >= 1 ms): ``PATH`` holds verdicts and pending frames (written by the publisher),
``PATH.frames`` (``journal.frames.sqlite3`` beside ``journal.sqlite3``) the received frames (written by
ingress); each connection attaches both for reads.

Acknowledged means judged: ingress spools each pushed frame's header and payload (``spool``, in the
frames file, in the same transaction as its received row) before the ack, and drops the spooled bytes once
the frame has a verdict, so the spool holds only frames in flight (bounded by ``journal.spool_max_bytes``:
over it, ingress answers busy instead of acknowledging). A restart (``recover``) judges the spooled frames
that have no verdict, gives the few acknowledged frames without a spooled payload a ``dropped`` verdict
saying so and the frames still waiting for the teacher (resumed if their deadline has not passed, else
resolved ``teacher_unreachable``). Retention deletes by row count and by age.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS fr.frames (
    seq INTEGER PRIMARY KEY, frame_id TEXT NOT NULL, camera_id TEXT NOT NULL, ts_recv REAL NOT NULL, sender TEXT);
CREATE INDEX IF NOT EXISTS fr.frames_id ON frames(frame_id, camera_id);
CREATE INDEX IF NOT EXISTS fr.frames_ts ON frames(ts_recv);
CREATE TABLE IF NOT EXISTS fr.spool (
    seq INTEGER PRIMARY KEY, frame_id TEXT NOT NULL, camera_id TEXT NOT NULL, header TEXT NOT NULL,
    payload BLOB NOT NULL, nbytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    seq INTEGER PRIMARY KEY, frame_id TEXT NOT NULL, camera_id TEXT NOT NULL, decided_by TEXT NOT NULL,
    status TEXT NOT NULL, decision TEXT NOT NULL, pending INTEGER NOT NULL, ts REAL NOT NULL, header TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS verdicts_id ON verdicts(frame_id, camera_id);
CREATE INDEX IF NOT EXISTS verdicts_ts ON verdicts(ts);
CREATE TABLE IF NOT EXISTS pending (
    frame_id TEXT NOT NULL, camera_id TEXT NOT NULL, deadline_ts REAL NOT NULL, request TEXT NOT NULL,
    payload BLOB, edge TEXT NOT NULL, PRIMARY KEY (frame_id, camera_id));
"""


@dataclass
class Entry:
    """One verdict to journal; ``header`` is the exact JSON that will be published."""
    frame_id: str
    camera_id: str
    decided_by: str
    status: str
    decision: str
    pending: bool
    ts: float
    header: bytes
    pending_request: Optional[bytes] = None  # infer header JSON: keep the frame for the teacher
    pending_payload: Optional[bytes] = None
    pending_deadline: float = 0.0
    resolves_pending: bool = False  # a teacher / unreachable verdict: the pending row goes
    seq: Optional[int] = None  # the verdict's sequence number (the publisher's), its row's key; None: next


@dataclass
class PendingRow:
    frame_id: str
    camera_id: str
    deadline_ts: float
    request: dict
    payload: Optional[bytes]
    edge: dict


OPEN_RETRIES = 100
OPEN_RETRY_SLEEP_S = 0.02


def _retry_locked(fn):
    """Switching a new database to WAL needs an exclusive lock, for which SQLite's busy handler is not
    always consulted (another connection opening the same new file at that moment): retry briefly."""
    for i in range(OPEN_RETRIES):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or i == OPEN_RETRIES - 1:
                raise
            time.sleep(OPEN_RETRY_SLEEP_S)


def frames_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(f"{p.stem}.frames{p.suffix or '.sqlite3'}")


class Journal:
    def __init__(self, path: str | Path, synchronous: str = "NORMAL"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"journal.synchronous must be NORMAL or FULL, got {synchronous!r}")
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("ATTACH DATABASE ? AS fr", (str(frames_path(self.path)),))
        for schema in ("main", "fr"):
            mode = _retry_locked(lambda: self._db.execute(f"PRAGMA {schema}.journal_mode=WAL").fetchone()[0])
            if mode.lower() != "wal":
                raise RuntimeError(f"journal {self.path}: SQLite refused WAL mode (got {mode}); on a network share?")
            self._db.execute(f"PRAGMA {schema}.synchronous={synchronous}")
        _retry_locked(lambda: self._db.executescript(SCHEMA))

    # -- writes -------------------------------------------------------------------------------
    def record_received(self, rows: list[tuple[str, str, float, str]],
                        spool: list[tuple[str, str, bytes, bytes]] = ()) -> None:
        """(frame_id, camera_id, ts_recv, sender) rows, and (frame_id, camera_id, header JSON, payload) of
        the frames to spool, in one transaction; returns once committed. The same transaction drops the
        spooled bytes of frames judged since, so the spool costs ingress no commit of its own."""
        if not rows:
            return
        with self._tx():
            self._db.executemany("INSERT INTO fr.frames(frame_id, camera_id, ts_recv, sender) VALUES (?,?,?,?)", rows)
            self._db.execute("DELETE FROM fr.spool WHERE EXISTS (SELECT 1 FROM verdicts v WHERE "
                             "v.frame_id = spool.frame_id AND v.camera_id = spool.camera_id)")
            if spool:
                self._db.executemany("INSERT INTO fr.spool(frame_id, camera_id, header, payload, nbytes) "
                                     "VALUES (?,?,?,?,?)", [(f, c, h.decode(), p, len(p)) for f, c, h, p in spool])

    def spooled_bytes(self) -> int:
        """Bytes spooled for frames still without a verdict (in flight); a read, no write."""
        return int(self._db.execute(
            "SELECT COALESCE(SUM(s.nbytes), 0) FROM spool s WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE "
            "v.frame_id = s.frame_id AND v.camera_id = s.camera_id)").fetchone()[0])

    def write(self, entries: list[Entry]) -> None:
        """Verdicts (and their pending rows) in one transaction; returns once committed."""
        if not entries:
            return
        with self._tx():
            self._db.executemany(
                "INSERT INTO verdicts(seq, frame_id, camera_id, decided_by, status, decision, pending, ts, header) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                [(e.seq, e.frame_id, e.camera_id, e.decided_by, e.status, e.decision, int(e.pending), e.ts,
                  e.header.decode()) for e in entries])
            adds = [(e.frame_id, e.camera_id, e.pending_deadline, e.pending_request.decode(), e.pending_payload,
                     e.header.decode()) for e in entries if e.pending and e.pending_request is not None]
            if adds:
                self._db.executemany("INSERT OR REPLACE INTO pending VALUES (?,?,?,?,?,?)", adds)
            gone = [(e.frame_id, e.camera_id) for e in entries if e.resolves_pending]
            if gone:
                self._db.executemany("DELETE FROM pending WHERE frame_id=? AND camera_id=?", gone)

    def prune(self, max_rows: int, max_age_s: float, now: float | None = None) -> int:
        cutoff = (now or time.time()) - max_age_s
        with self._tx():
            n = 0
            for table, ts in (("main.verdicts", "ts"), ("fr.frames", "ts_recv")):
                n += self._db.execute(f"DELETE FROM {table} WHERE {ts} < ?", (cutoff,)).rowcount
                n += self._db.execute(f"DELETE FROM {table} WHERE seq <= (SELECT MAX(seq) FROM {table}) - ?",
                                      (max_rows,)).rowcount
        return n

    # -- reads --------------------------------------------------------------------------------
    def unjudged(self, since_ts: float = 0.0) -> list[tuple[str, str]]:
        """Frames received (and acknowledged) that have no verdict at all: the daemon died with them queued."""
        return self._db.execute(
            "SELECT f.frame_id, f.camera_id FROM frames f WHERE f.ts_recv >= ? AND NOT EXISTS "
            "(SELECT 1 FROM verdicts v WHERE v.frame_id = f.frame_id AND v.camera_id = f.camera_id) ORDER BY f.seq",
            (since_ts,)).fetchall()

    def spooled_unjudged(self) -> list[tuple[str, str, dict, bytes]]:
        """(frame_id, camera_id, header, payload) of spooled frames without a verdict, oldest first."""
        rows = self._db.execute(
            "SELECT s.frame_id, s.camera_id, s.header, s.payload FROM spool s WHERE NOT EXISTS (SELECT 1 FROM "
            "verdicts v WHERE v.frame_id = s.frame_id AND v.camera_id = s.camera_id) ORDER BY s.seq").fetchall()
        return [(f, c, json.loads(h), bytes(p)) for f, c, h, p in rows]

    def pending(self) -> list[PendingRow]:
        rows = self._db.execute("SELECT frame_id, camera_id, deadline_ts, request, payload, edge FROM pending").fetchall()
        return [PendingRow(f, c, d, json.loads(r), p, json.loads(e)) for f, c, d, r, p, e in rows]

    def verdicts(self, frame_id: str | None = None) -> list[dict]:
        q = "SELECT header FROM verdicts" + (" WHERE frame_id = ?" if frame_id is not None else "") + " ORDER BY seq"
        return [json.loads(h) for (h,) in self._db.execute(q, (frame_id,) if frame_id is not None else ())]

    def last_seq(self) -> int:
        """The highest verdict sequence number journaled (0 for a new journal)."""
        return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM verdicts").fetchone()[0])

    def since(self, seq: int, limit: int) -> list[dict]:
        """Up to ``limit`` verdict headers with a sequence number above ``seq``, oldest first (a replay)."""
        rows = self._db.execute("SELECT header FROM verdicts WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [json.loads(h) for (h,) in rows]

    def received_ids(self) -> list[str]:
        return [f for (f,) in self._db.execute("SELECT frame_id FROM frames ORDER BY seq")]

    def counts(self) -> dict[str, int]:
        return {t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("frames", "verdicts", "pending")}

    def close(self) -> None:
        self._db.close()

    def _tx(self):
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        # DEFERRED: the write lock is taken on the first write, on that database file only (IMMEDIATE would
        # lock every attached file, and the two writer threads would wait on each other)
        self.db.execute("BEGIN")

    def __exit__(self, exc_type, *_):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
