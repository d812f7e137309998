"""A bounded on-disk cache of built (and vetted) binaries, so that a class running the
teacher's link builds it once.

Layout: ``ROOT/<key[:2]>/<key>/{prog,meta.json}``. An entry is written into a temporary
directory beside the others and renamed into place, so a reader sees a whole entry or none,
and two processes inserting the same key at once both end up with one good entry. The meta
records the binary's size and sha256: an entry that does not match (a torn disk, a hand
edit) is dropped and rebuilt. LRU order is the meta's mtime, touched on every hit, so it
survives a restart; the bounds (entries and bytes) are enforced on insert.

Only successful builds are stored (and, for runs with vet, only after vet passed): the
cache holds build artifacts, never a run's outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BINARY = "prog"
META = "meta.json"
TMP_PREFIX = "tmp-"
HASH_CHUNK = 1 << 20


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of a canonical JSON rendering of everything the binary depends on."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Entry:
    key: str
    size: int
    meta: dict[str, Any]


class BinaryCache:
    """Thread-safe: the pipeline calls it from worker threads (asyncio.to_thread)."""

    def __init__(self, root: Path, max_entries: int, max_bytes: int) -> None:
        self.root = root
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, int] = OrderedDict()  # key -> bytes, oldest first
        self._bytes = 0

    # ---- startup --------------------------------------------------------
    def open(self) -> None:
        """Index what a previous run left; drop torn temporaries."""
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        for shard in self.root.iterdir():
            if shard.name.startswith(TMP_PREFIX):
                shutil.rmtree(shard, ignore_errors=True)
                continue
            if not shard.is_dir():
                continue
            for entry in shard.iterdir():
                try:
                    meta = json.loads((entry / META).read_text())
                    mtime = (entry / META).stat().st_mtime
                    found.append((mtime, entry.name, int(meta["size"])))
                except (OSError, ValueError, KeyError, TypeError):
                    shutil.rmtree(entry, ignore_errors=True)
        found.sort()
        with self._lock:
            self._lru.clear()
            self._bytes = 0
            for _, key, size in found:
                self._lru[key] = size
                self._bytes += size
        self._evict()
        log.info("binary cache: %d entries, %d bytes", len(self._lru), self._bytes)

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    # ---- lookups --------------------------------------------------------
    def get(self, key: str, dest: Path) -> Entry | None:
        """On a hit, hard-link (or copy) the binary to `dest` and return the entry: the
        caller runs its own link, so an eviction meanwhile cannot pull it away."""
        d = self._dir(key)
        try:
            meta = json.loads((d / META).read_text())
            size = int(meta["size"])
            if (d / BINARY).stat().st_size != size or _sha256_file(d / BINARY) != meta["sha256"]:
                raise ValueError("binary does not match its meta")
            _link_or_copy(d / BINARY, dest)
        except FileNotFoundError:
            # not there (a miss), or half there (someone deleted a file): either way, gone
            self._remove(key)
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("binary cache entry %s is corrupt (%s); dropping it", key[:12], e)
            self._remove(key)
            return None
        with contextlib.suppress(OSError):
            os.utime(d / META)
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
            else:  # inserted by another process sharing the directory
                self._lru[key] = size
                self._bytes += size
        return Entry(key, size, meta)

    def put(self, key: str, binary: Path, meta: dict[str, Any] | None = None) -> bool:
        size = binary.stat().st_size
        if size > self.max_bytes or self.max_entries < 1:
            return False
        final = self._dir(key)
        if final.exists():
            return True
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            tmp.mkdir(parents=True)
            _link_or_copy(binary, tmp / BINARY)
            record = {**(meta or {}), "key": key, "size": size,
                      "sha256": _sha256_file(tmp / BINARY), "created": time.time()}
            (tmp / META).write_text(json.dumps(record, sort_keys=True))
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:
                # someone else stored the same key first: theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
                return final.exists()
        except OSError as e:
            log.warning("binary cache: storing %s failed: %s", key[:12], e)
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        with self._lock:
            if key not in self._lru:
                self._lru[key] = size
                self._bytes += size
        self._evict()
        return True

    # ---- bounds ---------------------------------------------------------
    def _evict(self) -> None:
        victims = []
        with self._lock:
            while self._lru and (len(self._lru) > self.max_entries
                                 or self._bytes > self.max_bytes):
                key, size = self._lru.popitem(last=False)
                self._bytes -= size
                victims.append(key)
        for key in victims:
            self._delete(key)

    def _forget(self, key: str) -> None:
        with self._lock:
            size = self._lru.pop(key, None)
            if size is not None:
                self._bytes -= size

    def _remove(self, key: str) -> None:
        self._forget(key)
        self._delete(key)

    def _delete(self, key: str) -> None:
        # rename first: a concurrent reader sees a whole entry or none, never half of one
        d = self._dir(key)
        trash = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(d, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o755)
