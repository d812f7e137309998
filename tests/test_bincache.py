"""Issue 6: the on-disk cache of built binaries, alone and behind a real server."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import HELLO, Client, ServerHandle, done_of, launch, stdout_of
from gofiddle.bincache import BinaryCache, cache_key

aio = pytest.mark.asyncio(loop_scope="session")


def blob(tmp: Path, name: str, size: int, fill: bytes = b"x") -> Path:
    p = tmp / name
    p.write_bytes((fill * size)[:size])
    return p


# ---- the cache alone ---------------------------------------------------------------


def test_put_get_and_restart(tmp_path):
    root = tmp_path / "cache"
    c = BinaryCache(root, 10, 1 << 20)
    c.open()
    k = cache_key({"files": [["prog.go", "x"]]})
    assert c.get(k, tmp_path / "miss") is None
    assert c.put(k, blob(tmp_path, "b", 1000), {"path": "fast"})
    assert c.get(k, tmp_path / "out1") is not None
    assert (tmp_path / "out1").read_bytes() == b"x" * 1000
    assert os.access(tmp_path / "out1", os.X_OK) or (tmp_path / "out1").stat().st_nlink > 1
    # a new process sees the same entries
    c2 = BinaryCache(root, 10, 1 << 20)
    c2.open()
    assert len(c2) == 1 and c2.bytes == 1000
    entry = c2.get(k, tmp_path / "out2")
    assert entry is not None and entry.meta["path"] == "fast"


def test_key_covers_every_input():
    base = {"files": [["prog.go", "a"]], "go": "go1.27.3", "vet": True, "path": "fast"}
    keys = {cache_key(base)}
    for change in ({"files": [["prog.go", "b"]]}, {"files": [["main.go", "a"]]},
                   {"go": "go1.27.4"}, {"vet": False}, {"path": "slow"}):
        keys.add(cache_key({**base, **change}))
    assert len(keys) == 6
    assert cache_key(dict(reversed(base.items()))) == cache_key(base)


def test_lru_bound_by_entries(tmp_path):
    c = BinaryCache(tmp_path / "c", 3, 1 << 20)
    c.open()
    keys = [cache_key({"n": i}) for i in range(5)]
    for i, k in enumerate(keys[:3]):
        c.put(k, blob(tmp_path, f"b{i}", 10))
    assert c.get(keys[0], tmp_path / "touch") is not None  # 0 is now the newest
    c.put(keys[3], blob(tmp_path, "b3", 10))
    c.put(keys[4], blob(tmp_path, "b4", 10))
    assert len(c) == 3
    present = {k for k in keys if c.get(k, tmp_path / f"o{k[:6]}") is not None}
    assert present == {keys[0], keys[3], keys[4]}
    assert len([d for s in (tmp_path / "c").iterdir() for d in s.iterdir()]) == 3


def test_lru_bound_by_bytes(tmp_path):
    c = BinaryCache(tmp_path / "c", 100, 2500)
    c.open()
    keys = [cache_key({"n": i}) for i in range(4)]
    for i, k in enumerate(keys):
        c.put(k, blob(tmp_path, f"b{i}", 1000))
    assert c.bytes <= 2500 and len(c) == 2
    assert c.get(keys[0], tmp_path / "o0") is None
    assert c.get(keys[3], tmp_path / "o3") is not None
    # a binary bigger than the whole cache is not stored at all
    assert not c.put(cache_key({"big": 1}), blob(tmp_path, "big", 4000))


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta", "no-binary"])
def test_corrupt_entry_is_dropped(tmp_path, damage):
    c = BinaryCache(tmp_path / "c", 10, 1 << 20)
    c.open()
    k = cache_key({"n": 1})
    c.put(k, blob(tmp_path, "b", 5000, b"abc"))
    d = tmp_path / "c" / k[:2] / k
    binary = d / "prog"
    if damage == "flip":
        data = bytearray(binary.read_bytes())
        data[100] ^= 0xFF
        binary.unlink()  # hard-linked to the source: replace, don't write through
        binary.write_bytes(bytes(data))
    elif damage == "truncate":
        binary.unlink()
        binary.write_bytes(b"abc")
    elif damage == "meta":
        (d / "meta.json").write_text("{not json")
    else:
        binary.unlink()
    assert c.get(k, tmp_path / "out") is None
    assert not d.exists() and len(c) == 0
    # and it can be stored again
    assert c.put(k, blob(tmp_path, "b2", 5000, b"abc"))
    assert c.get(k, tmp_path / "out2") is not None


def test_torn_writes_and_leftovers_are_cleaned(tmp_path):
    root = tmp_path / "c"
    c = BinaryCache(root, 10, 1 << 20)
    c.open()
    (root / "tmp-deadbeef").mkdir()
    (root / "tmp-deadbeef" / "prog").write_bytes(b"half")
    bad = root / "ab" / ("ab" + "0" * 62)
    bad.mkdir(parents=True)
    (bad / "prog").write_bytes(b"no meta")
    c2 = BinaryCache(root, 10, 1 << 20)
    c2.open()
    assert not (root / "tmp-deadbeef").exists() and not bad.exists() and len(c2) == 0


def test_concurrent_puts_of_one_key(tmp_path):
    c = BinaryCache(tmp_path / "c", 10, 1 << 20)
    c.open()
    k = cache_key({"same": True})
    sources = [blob(tmp_path, f"s{i}", 3000, b"z") for i in range(8)]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda p=p: results.append(c.put(k, p)))
               for p in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results) and len(c) == 1 and c.bytes == 3000
    assert c.get(k, tmp_path / "o") is not None
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith("tmp-")]


# ---- behind a server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cached_server(server_tmp: Path) -> Iterator[ServerHandle]:
    handle = launch(server_tmp, binary_cache_entries=4, run_seconds=2)
    yield handle
    handle.stop()


def metric(server: ServerHandle, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def entries(server: ServerHandle) -> list[Path]:
    root = server.data_dir / "bincache"
    return [d for s in root.iterdir() if not s.name.startswith("tmp-") for d in s.iterdir()]


@aio
async def test_second_run_is_cached(cached_server):
    srv = cached_server
    c = await Client.connect(srv.ws_url)
    src = HELLO.replace("hello, world", "cache me")
    hits = metric(srv, "gofiddle_binary_cache_hits_total")
    tools = 'gofiddle_processes_started_total{kind="toolchain"}'
    first = await c.run(src)
    assert done_of(first).get("cached") is not True
    assert [f["phase"] for f in first if f["type"] == "started"] == ["build", "vet", "run"]
    spawned = metric(srv, tools)
    second = await c.run(src, id="r2")
    assert metric(srv, tools) == spawned  # no compiler, linker or vet ran
    done = done_of(second)
    assert done["status"] == "ok" and done["cached"] is True
    assert done["timings"]["build_ms"] == 0
    # build and vet were skipped: their phases are announced (clients expect them) and
    # answered from the cache at once, without diagnostics or tool processes
    assert [f["phase"] for f in second if f["type"] == "started"] == ["build", "vet", "run"]
    assert not [f for f in second if f["type"] == "diagnostics"]
    assert stdout_of(second) == "cache me\n"
    assert metric(srv, "gofiddle_binary_cache_hits_total") == hits + 1
    # a different source is not a hit; vet: false is another key
    other = await c.run(src.replace("cache me", "cache me not"), id="r3")
    assert done_of(other).get("cached") is not True
    novet = await c.run(src, id="r4", vet=False)
    assert done_of(novet).get("cached") is not True
    assert done_of(await c.run(src, id="r5", vet=False))["cached"] is True
    await c.close()


@aio
async def test_failures_are_not_cached_but_binaries_of_timeouts_are(cached_server):
    c = await Client.connect(cached_server.ws_url)
    vet_bad = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Printf("%d\\n", "s")\n}\n'
    for i in range(2):
        done = done_of(await c.run(vet_bad, id=f"v{i}"))
        assert done["status"] == "vet_failed" and not done.get("cached")
    broken = 'package main\n\nfunc main() {\n\tx := 1\n}\n'
    for i in range(2):
        done = done_of(await c.run(broken, id=f"b{i}"))
        assert done["status"] == "build_failed" and not done.get("cached")
    # the build artifact is reused; the run's outcome is not: it times out again
    sleeper = ('package main\n\nimport "time"\n\nfunc main() {\n'
               '\ttime.Sleep(time.Hour)\n}\n')
    first = done_of(await c.run(sleeper, id="t1"))
    second = done_of(await c.run(sleeper, id="t2"))
    assert first["status"] == second["status"] == "timeout"
    assert second["cached"] is True
    await c.close()


@aio
async def test_cache_bound_evicts(cached_server):
    srv = cached_server
    c = await Client.connect(srv.ws_url)
    srcs = [HELLO.replace("hello, world", f"evict {i}") for i in range(6)]
    for i, src in enumerate(srcs):
        assert done_of(await c.run(src, id=f"e{i}"))["status"] == "ok"
    assert len(entries(srv)) <= 4
    # the oldest went, the newest is still there
    assert done_of(await c.run(srcs[-1], id="new"))["cached"] is True
    assert done_of(await c.run(srcs[0], id="old")).get("cached") is not True
    await c.close()


@aio
async def test_corrupted_entry_is_rebuilt(cached_server):
    srv = cached_server
    c = await Client.connect(srv.ws_url)
    src = HELLO.replace("hello, world", "corrupt me")
    assert done_of(await c.run(src, id="a"))["status"] == "ok"
    mine = [d for d in entries(srv)
            if b"corrupt me" in (d / "prog").read_bytes()]
    assert len(mine) == 1
    binary = mine[0] / "prog"
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0xFF
    binary.unlink()
    binary.write_bytes(bytes(data))
    frames = await c.run(src, id="b")
    done = done_of(frames)
    assert done["status"] == "ok" and not done.get("cached")
    assert stdout_of(frames) == "corrupt me\n"
    assert done["timings"]["build_ms"] > 0
    assert done_of(await c.run(src, id="c"))["cached"] is True
    await c.close()


@aio
async def test_cache_survives_restart(server_tmp):
    data_dir = server_tmp / "bincache-restart"
    src = HELLO.replace("hello, world", "persist me")
    first = launch(server_tmp, data_dir=data_dir)
    try:
        c = await Client.connect(first.ws_url)
        assert done_of(await c.run(src)).get("cached") is not True
        await c.close()
    finally:
        first.stop()
    meta = [json.loads(p.read_text()) for p in (data_dir / "bincache").glob("*/*/meta.json")]
    assert meta and meta[0]["path"] in ("fast", "slow")
    second = launch(server_tmp, data_dir=data_dir)
    try:
        c = await Client.connect(second.ws_url)
        frames = await c.run(src)
        assert done_of(frames)["cached"] is True and stdout_of(frames) == "persist me\n"
        await c.close()
    finally:
        second.stop()
