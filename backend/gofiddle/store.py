"""Shared snippets: content-addressed, durable, safe for many writers.

Ids follow the Go playground: base64url(sha256(salt || source)) cut to 11
characters, so sharing the same source twice gives the same link. A truncated
hash can collide; when the shorter id already belongs to different source the
id grows one character at a time, and lookups are by exact id, so a link never
resolves to someone else's snippet.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "DEFAULT_SALT",
    "ID_LENGTH",
    "MAX_ID_LENGTH",
    "MIN_ID_LENGTH",
    "InvalidSnippet",
    "SQLiteSnippetStore",
    "Snippet",
    "SnippetError",
    "SnippetIdExhausted",
    "SnippetStore",
    "SnippetTooLarge",
    "StoreClosed",
    "sha256_digest",
    "valid_id",
]

MIN_ID_LENGTH = 10
ID_LENGTH = 11
MAX_ID_LENGTH = 16

# A fixed salt keeps ids stable across restarts and machines; it only has to
# differ from other services so our ids are not guessable from theirs.
DEFAULT_SALT = b"gofiddle snippet salt\n"

_ID_RE = re.compile(rf"[A-Za-z0-9_-]{{{MIN_ID_LENGTH},{MAX_ID_LENGTH}}}")


def valid_id(candidate: str) -> bool:
    """Cheap syntactic check so routes can 404 junk without touching the database."""
    return _ID_RE.fullmatch(candidate) is not None


def sha256_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class SnippetError(Exception):
    """Base for errors a caller should turn into a client-facing answer."""


class SnippetTooLarge(SnippetError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"snippet is {size} bytes, limit is {limit}")
        self.size = size
        self.limit = limit


class InvalidSnippet(SnippetError):
    """Source that cannot be stored as UTF-8 (e.g. a lone surrogate from JSON "\\ud800")."""


class SnippetIdExhausted(SnippetError):
    """Every id length up to MAX_ID_LENGTH is taken by other sources (should never happen)."""


class StoreClosed(RuntimeError):
    pass


@dataclass(frozen=True)
class Snippet:
    id: str
    source: str
    created_at: float  # Unix seconds
    views: int


class SnippetStore(Protocol):
    def put(self, source: str) -> str:
        """Store `source` (idempotent) and answer its id."""
        ...

    def get(self, snippet_id: str) -> Snippet | None:
        """Read without side effects; None for unknown or malformed ids."""
        ...

    def record_view(self, snippet_id: str) -> bool:
        """Count one view; False if the snippet does not exist."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS snippets (
    id         TEXT PRIMARY KEY,
    source     TEXT NOT NULL,
    created_at REAL NOT NULL,
    views      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""


class SQLiteSnippetStore:
    """The embedded default store: one SQLite file in WAL mode.

    Blocking; the server calls it through `asyncio.to_thread`. Connections are
    pooled rather than shared so readers on different threads run in parallel
    under WAL, while SQLite's own locking (with a busy timeout) serialises
    writers across threads and processes.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        *,
        salt: bytes = DEFAULT_SALT,
        id_length: int = ID_LENGTH,
        busy_timeout: float = 10.0,
        synchronous: str = "FULL",
        digest: Callable[[bytes], bytes] = sha256_digest,
    ) -> None:
        if not MIN_ID_LENGTH <= id_length <= MAX_ID_LENGTH:
            raise ValueError(f"id_length must be in [{MIN_ID_LENGTH}, {MAX_ID_LENGTH}]")
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            # OFF would acknowledge shares that a crash can lose.
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._salt = salt
        self._id_length = id_length
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous.upper()
        self._digest = digest
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as conn:
            conn.execute(_SCHEMA)

    # --- connections -------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            # Autocommit: transactions are opened explicitly with BEGIN IMMEDIATE
            # so a writer takes the lock before it reads what it will decide on.
            isolation_level=None,
            # Pooled connections move between threads, one user at a time.
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"could not enable WAL (got {mode!r})")
            # FULL: each commit fsyncs the WAL, so an acknowledged share survives
            # power loss too; NORMAL would only survive a process crash.
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreClosed("snippet store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        except BaseException:
            # A connection that failed mid-transaction is not worth repairing.
            if conn.in_transaction:
                conn.close()
                raise
            self._release(conn)
            raise
        self._release(conn)

    def _release(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close idle connections now; ones in use close when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> SQLiteSnippetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- ids ---------------------------------------------------------------

    def _candidates(self, data: bytes) -> list[str]:
        full = base64.urlsafe_b64encode(self._digest(self._salt + data)).decode("ascii")
        full = full.rstrip("=")
        return [full[:n] for n in range(self._id_length, min(MAX_ID_LENGTH, len(full)) + 1)]

    # --- operations --------------------------------------------------------

    def put(self, source: str) -> str:
        try:
            data = source.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidSnippet("source is not valid Unicode text") from exc
        if len(data) > self.max_bytes:
            raise SnippetTooLarge(len(data), self.max_bytes)
        candidates = self._candidates(data)

        with self._connection() as conn:
            # Re-sharing is common (every share of an unchanged example), so
            # answer it from a plain read without queueing for the write lock.
            for cid in candidates:
                row = conn.execute("SELECT source FROM snippets WHERE id = ?", (cid,)).fetchone()
                if row is None:
                    break
                if row[0] == source:
                    return cid

            conn.execute("BEGIN IMMEDIATE")
            try:
                chosen = self._claim(conn, candidates, source)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return chosen

    def _claim(self, conn: sqlite3.Connection, candidates: list[str], source: str) -> str:
        # Walk the chain again under the write lock: another writer may have
        # taken an id since the optimistic read.
        for cid in candidates:
            row = conn.execute("SELECT source FROM snippets WHERE id = ?", (cid,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO snippets (id, source, created_at) VALUES (?, ?, ?)",
                    (cid, source, time.time()),
                )
                return cid
            if row[0] == source:
                return cid
        raise SnippetIdExhausted(f"no free id up to {MAX_ID_LENGTH} characters")

    def get(self, snippet_id: str) -> Snippet | None:
        if not valid_id(snippet_id):
            return None
        with self._connection() as conn:
            row = conn.execute(
                "SELECT source, created_at, views FROM snippets WHERE id = ?", (snippet_id,)
            ).fetchone()
        if row is None:
            return None
        return Snippet(id=snippet_id, source=row[0], created_at=row[1], views=row[2])

    def record_view(self, snippet_id: str) -> bool:
        if not valid_id(snippet_id):
            return False
        with self._connection() as conn:
            cur = conn.execute("UPDATE snippets SET views = views + 1 WHERE id = ?", (snippet_id,))
            return cur.rowcount > 0

    def count(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT count(*) FROM snippets").fetchone()[0])
