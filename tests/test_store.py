from __future__ import annotations

import base64
import hashlib
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gofiddle.store import (
    DEFAULT_SALT,
    MAX_ID_LENGTH,
    InvalidSnippet,
    SnippetIdExhausted,
    SnippetTooLarge,
    SQLiteSnippetStore,
    StoreClosed,
    valid_id,
)

LIMIT = 64 * 1024

AWKWARD = [
    "package main\n\nfunc main() {\n\tprintln(\"tabs\")\n}\n",
    "package main\r\n\r\nfunc main() {\r\n\tprintln(\"crlf\")\r\n}\r\n",
    "package main\n\n// héllo wörld, 日本語, Ελληνικά\nfunc main() {}\n",
    "package main\n\nfunc main() { println(\"🐹🚀 \\u00e9\") } // 👩‍👩‍👧\n",
    "  leading and trailing whitespace \t \n\n\n",
    "no newline at end",
    "nul\x00inside and \x7f del and \u2028 line separator",
    "",
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "snippets.db"


@pytest.fixture
def store(db: Path):
    s = SQLiteSnippetStore(db, LIMIT)
    yield s
    s.close()


def expected_id(source: str, length: int = 11) -> str:
    digest = hashlib.sha256(DEFAULT_SALT + source.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode()[:length]


@pytest.mark.parametrize("source", AWKWARD)
def test_round_trip_is_exact(store: SQLiteSnippetStore, source: str) -> None:
    sid = store.put(source)
    snippet = store.get(sid)
    assert snippet is not None
    assert snippet.source == source
    assert snippet.source.encode("utf-8") == source.encode("utf-8")
    assert snippet.id == sid
    assert snippet.views == 0
    assert snippet.created_at > 0


def test_ids_are_content_addressed(store: SQLiteSnippetStore) -> None:
    a = store.put(AWKWARD[0])
    assert store.put(AWKWARD[0]) == a
    assert a == expected_id(AWKWARD[0])
    ids = {store.put(s) for s in AWKWARD}
    assert len(ids) == len(AWKWARD)
    # One byte of difference (CRLF vs LF) is a different snippet.
    assert store.put("x\r\n") != store.put("x\n")
    assert store.count() == len(AWKWARD) + 2


def test_id_shape(store: SQLiteSnippetStore) -> None:
    for i in range(200):
        sid = store.put(f"package main // {i}\n")
        assert len(sid) == 11
        assert valid_id(sid)
        assert set(sid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_valid_id() -> None:
    assert valid_id("abcdefghij")
    assert valid_id("A-_0123456789xyz")
    assert not valid_id("short")
    assert not valid_id("x" * 17)
    assert not valid_id("abc/../defgh")
    assert not valid_id("abcdefghij.go")
    assert not valid_id("abcdefghij\n")
    assert not valid_id("abcdéfghijk")


def test_unknown_and_junk_ids(store: SQLiteSnippetStore) -> None:
    assert store.get("AAAAAAAAAAA") is None
    assert store.get("../../etc/passwd") is None
    assert store.get("") is None
    assert store.record_view("AAAAAAAAAAA") is False


def test_salt_changes_ids(db: Path, tmp_path: Path) -> None:
    with SQLiteSnippetStore(db, LIMIT) as a, \
            SQLiteSnippetStore(tmp_path / "other.db", LIMIT, salt=b"other") as b:
        assert a.put("same") != b.put("same")


def test_collision_extends_id(db: Path) -> None:
    # Every source hashes alike, so each new source must take a longer id.
    store = SQLiteSnippetStore(db, LIMIT, digest=lambda data: b"\x00" * 32)
    sources = [f"source {i}" for i in range(MAX_ID_LENGTH - 11 + 1)]
    ids = [store.put(s) for s in sources]
    assert [len(i) for i in ids] == list(range(11, MAX_ID_LENGTH + 1))
    assert all(i == "A" * len(i) for i in ids)
    # Re-putting finds each source's own id, never a neighbour's.
    assert [store.put(s) for s in reversed(sources)] == list(reversed(ids))
    for sid, source in zip(ids, sources, strict=True):
        snippet = store.get(sid)
        assert snippet is not None and snippet.source == source
    # Beyond 16 characters there is no id left: refuse rather than overwrite.
    with pytest.raises(SnippetIdExhausted):
        store.put("one too many")
    assert store.count() == len(sources)
    store.close()


def test_collision_with_realistic_partial_match(db: Path) -> None:
    # Digests agree on their first 9 bytes (12 base64 characters) and differ
    # after, as a real truncated-hash collision would.
    def digest(data: bytes) -> bytes:
        return b"\x11" * 9 + hashlib.sha256(data).digest()[:23]

    with SQLiteSnippetStore(db, LIMIT, digest=digest) as store:
        a, b = store.put("first"), store.put("second")
        assert len(a) == 11 and len(b) == 12 and b.startswith(a)
        assert store.get(a).source == "first"  # type: ignore[union-attr]
        assert store.get(b).source == "second"  # type: ignore[union-attr]
        # The 12-char prefix of "first"'s own chain is not "second"'s id.
        assert store.put("first") == a


def test_size_limit(db: Path) -> None:
    with SQLiteSnippetStore(db, 10) as store:
        assert store.get(store.put("x" * 10)) is not None
        with pytest.raises(SnippetTooLarge) as info:
            store.put("x" * 11)
        assert info.value.size == 11 and info.value.limit == 10
        # The limit is in UTF-8 bytes, not characters: 4 x 3 bytes = 12.
        with pytest.raises(SnippetTooLarge):
            store.put("日本語日")
        assert store.count() == 1


def test_lone_surrogate_is_rejected(store: SQLiteSnippetStore) -> None:
    # json.loads('"\\ud800"') yields this; it has no UTF-8 form.
    with pytest.raises(InvalidSnippet):
        store.put("package main // \ud800")


def test_record_view(store: SQLiteSnippetStore) -> None:
    sid = store.put("viewed")
    assert store.record_view(sid) is True
    assert store.record_view(sid) is True
    assert store.get(sid).views == 2  # type: ignore[union-attr]


def test_survives_reopen_and_uses_wal(db: Path) -> None:
    with SQLiteSnippetStore(db, LIMIT) as store:
        ids = {store.put(s): s for s in AWKWARD}
    with SQLiteSnippetStore(db, LIMIT) as store:
        for sid, source in ids.items():
            assert store.get(sid).source == source  # type: ignore[union-attr]
            assert store.put(source) == sid
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_closed_store_refuses(db: Path) -> None:
    store = SQLiteSnippetStore(db, LIMIT)
    store.close()
    with pytest.raises(StoreClosed):
        store.put("x")
    store.close()  # idempotent


def test_concurrent_threads(store: SQLiteSnippetStore) -> None:
    results: list[dict[str, str]] = [{} for _ in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(50):
                for source in (f"thread {n} snippet {i}\t✓\r\n", f"shared snippet {i}"):
                    sid = store.put(source)
                    results[n][sid] = source
                    got = store.get(sid)
                    assert got is not None and got.source == source
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    merged: dict[str, str] = {}
    for r in results:
        for sid, source in r.items():
            assert merged.setdefault(sid, source) == source
    assert len(merged) == 8 * 50 + 50
    assert store.count() == len(merged)
    for sid, source in merged.items():
        assert store.get(sid).source == source  # type: ignore[union-attr]


def _process_writer(args: tuple[str, int]) -> list[tuple[str, str]]:
    path, n = args
    out = []
    with SQLiteSnippetStore(Path(path), LIMIT) as store:
        for i in range(40):
            for source in (f"process {n} snippet {i} — é\n", f"common {i}\n"):
                out.append((store.put(source), source))
    return out


def test_concurrent_processes(db: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        batches = pool.map(_process_writer, [(str(db), n) for n in range(4)], chunksize=1)
    merged: dict[str, str] = {}
    for batch in batches:
        for sid, source in batch:
            assert merged.setdefault(sid, source) == source
    assert len(merged) == 4 * 40 + 40
    with SQLiteSnippetStore(db, LIMIT) as store:
        assert store.count() == len(merged)
        for sid, source in merged.items():
            assert store.get(sid).source == source  # type: ignore[union-attr]


_CHILD = r"""
import sys
from pathlib import Path
from gofiddle.store import SQLiteSnippetStore

store = SQLiteSnippetStore(Path(sys.argv[1]), 1 << 20)
start = int(sys.argv[2])
for i in range(start, start + 1_000_000):
    # Vary the size so some writes span several WAL pages when the kill lands.
    source = "package main\r\n\t// %d héllo 🐹\n" % i + "x" * (i * 37 % 9000)
    sid = store.put(source)
    sys.stdout.write("%d %s\n" % (i, sid))
    sys.stdout.flush()
"""


def _source(i: int) -> str:
    return f"package main\r\n\t// {i} héllo 🐹\n" + "x" * (i * 37 % 9000)


def test_kill_9_loses_nothing_acknowledged(db: Path) -> None:
    acknowledged: dict[str, int] = {}
    start = 0
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert child.stdout is not None
        seen = 0
        try:
            for line in child.stdout:
                i, sid = line.split()
                acknowledged[sid] = int(i)
                seen += 1
                if seen >= 150 + 50 * round_:
                    child.send_signal(signal.SIGKILL)
                    break
            # Lines already in the pipe were acknowledged before the kill.
            for line in child.stdout:
                i, sid = line.split()
                acknowledged[sid] = int(i)
        finally:
            child.kill()
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        start = max(acknowledged.values()) + 1

        with SQLiteSnippetStore(db, 1 << 20) as store:
            for sid, i in acknowledged.items():
                snippet = store.get(sid)
                assert snippet is not None, f"acknowledged snippet {i} ({sid}) lost"
                assert snippet.source == _source(i)
