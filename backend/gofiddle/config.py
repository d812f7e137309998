"""All limits and defaults in one frozen settings object.

Every field can be set from the command line (``--field-name``) or from the
environment (``GOFIDDLE_FIELD_NAME``); the command line wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    # --- network and process ---
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    data_dir: str = field(default="data", metadata={"help": "snippets, job dirs, caches"})
    gocache_dir: str = field(
        default="", metadata={"help": "shared Go build cache (default DATA_DIR/gocache)"}
    )
    public_url: str = field(default="", metadata={"help": "base URL used in share links"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning"})
    # measured: uvloop forks the whole server per spawn, the stdlib loop uses vfork;
    # 2-3 ms less server CPU per run (docs/benchmarks.md)
    event_loop: str = field(
        default="asyncio", metadata={"help": "uvicorn event loop: asyncio, uvloop, auto"}
    )

    # --- queue and workers ---
    workers: int = field(default_factory=_cpu_count, metadata={"help": "concurrent jobs"})
    queue_size: int = field(default=64, metadata={"help": "ring buffer capacity"})
    queue_wait_seconds: float = field(
        default=60.0, metadata={"help": "max wait in the queue before 'expired'"}
    )
    busy_retry_ms: int = field(default=2000, metadata={"help": "retry_after_ms when busy"})
    eta_window: int = field(default=20, metadata={"help": "jobs in the moving average"})
    eta_default_ms: int = field(default=1000, metadata={"help": "job time before any measured"})

    # --- sandbox ---
    sandbox: str = field(default="bwrap", metadata={"help": "bwrap, or none (development)"})
    bwrap_path: str = field(default="bwrap", metadata={"help": "bubblewrap binary"})
    use_cgroups: bool = field(
        default=True, metadata={"help": "per-job cgroups when the kernel allows (else rlimits)"}
    )
    require_cgroups: bool = field(
        default=False, metadata={"help": "fail startup if cgroups are not writable"}
    )
    kill_grace_seconds: float = field(
        default=0.2, metadata={"help": "SIGTERM to SIGKILL grace"}
    )

    # --- source ---
    source_bytes: int = field(default=64 * KiB, metadata={"help": "max source size"})
    max_files: int = field(default=20, metadata={"help": "max files in txtar source"})
    job_id_chars: int = field(default=64, metadata={"help": "max length of a client job id"})
    frame_bytes: int = field(
        default=256 * KiB, metadata={"help": "max incoming WebSocket frame"}
    )

    # --- build, vet, check, format ---
    build_seconds: float = field(default=20.0, metadata={"help": "build wall time"})
    vet_seconds: float = field(default=15.0, metadata={"help": "vet wall time"})
    check_seconds: float = field(default=10.0, metadata={"help": "check wall time"})
    format_seconds: float = field(default=5.0, metadata={"help": "format wall time"})
    build_memory_bytes: int = field(default=1 * GiB, metadata={"help": "toolchain memory"})
    build_pids: int = field(default=128, metadata={"help": "toolchain pids/threads"})
    build_file_bytes: int = field(default=128 * MiB, metadata={"help": "toolchain file size"})
    build_tmp_bytes: int = field(default=512 * MiB, metadata={"help": "toolchain /tmp size"})
    build_open_files: int = field(default=1024, metadata={"help": "toolchain open files"})
    build_cpu_seconds: int = field(default=60, metadata={"help": "toolchain CPU seconds"})
    check_concurrency: int = field(default=2, metadata={"help": "parallel checks/formats"})
    side_requests_per_session: int = field(
        default=4, metadata={"help": "format/check/share in flight per session"}
    )
    goproxy: str = field(default="off", metadata={"help": "GOPROXY for builds"})
    goflags: str = field(default="-mod=mod -trimpath", metadata={"help": "GOFLAGS for builds"})
    build_gomaxprocs: int = field(default=2, metadata={"help": "GOMAXPROCS for the toolchain"})
    fast_path: bool = field(
        default=True, metadata={"help": "compile/link/vet std-only main packages directly"})
    fast_gomaxprocs: int = field(
        default=1, metadata={"help": "GOMAXPROCS for compile/link/vet on the fast path"})
    fast_gogc: str = field(
        default="off", metadata={"help": "GOGC for the fast path tools (GOMEMLIMIT caps)"})
    fast_compile_concurrency: int = field(
        default=1, metadata={"help": "compile -c on the fast path"})
    concurrent_vet: bool = field(
        default=True, metadata={"help": "fast path: run vet beside compile+link"})
    fast_single_spawn: bool = field(
        default=True, metadata={"help": "fast path: compile, link, vet in one sandbox spawn"})
    fast_extra_packages: int = field(
        default=64, metadata={"help": "std packages added to the fast path index on demand"})

    # --- run ---
    run_seconds: float = field(default=10.0, metadata={"help": "program wall time"})
    run_cpu_seconds: int = field(default=10, metadata={"help": "program CPU seconds (hard)"})
    run_memory_bytes: int = field(default=256 * MiB, metadata={"help": "program memory"})
    run_pids: int = field(default=64, metadata={"help": "program pids/threads"})
    run_cpu_cores: float = field(
        default=1.0, metadata={"help": "program CPU quota in cores (cgroup cpu)"}
    )
    run_file_bytes: int = field(default=16 * MiB, metadata={"help": "program file size"})
    run_tmp_bytes: int = field(default=16 * MiB, metadata={"help": "program /tmp size"})
    run_open_files: int = field(default=256, metadata={"help": "program open files"})
    run_gomaxprocs: int = field(default=2, metadata={"help": "GOMAXPROCS for programs"})
    output_bytes: int = field(default=1 * MiB, metadata={"help": "output cap per job"})
    stdin_bytes: int = field(default=1 * MiB, metadata={"help": "stdin cap per job"})
    output_flush_ms: int = field(default=15, metadata={"help": "output coalescing window"})
    output_chunk_bytes: int = field(default=16 * KiB, metadata={"help": "max output frame"})

    # --- sessions ---
    idle_session_seconds: float = field(default=900.0, metadata={"help": "idle session close"})
    ping_interval_seconds: float = field(default=20.0, metadata={"help": "WS keepalive ping"})
    send_queue_frames: int = field(
        default=64, metadata={"help": "frames buffered per session before backpressure"}
    )
    # a classroom shares one NAT address: these are per address, so they are generous
    max_sessions_per_client: int = field(default=500, metadata={"help": "per address"})
    runs_per_minute: int = field(default=1200, metadata={"help": "per address"})
    shares_per_minute: int = field(default=30, metadata={"help": "per address"})

    # --- degradation and shutdown ---
    breaker_open_seconds: float = field(
        default=5.0, metadata={"help": "queue saturated this long opens the breaker"}
    )
    breaker_saturation: float = field(
        default=0.9, metadata={"help": "queue fill ratio counted as saturated"}
    )
    breaker_cooldown_seconds: float = field(
        default=10.0, metadata={"help": "open state lasts this long before half-open"}
    )
    shutdown_seconds: float = field(default=10.0, metadata={"help": "drain deadline"})

    # --- caches ---
    binary_cache_entries: int = field(default=512, metadata={"help": "built binaries kept"})
    binary_cache_bytes: int = field(default=512 * MiB, metadata={"help": "binary cache size"})
    binary_cache_dir: str = field(
        default="", metadata={"help": "binary cache (default DATA_DIR/bincache)"})
    warm_packages: str = field(
        default="bufio,bytes,context,errors,fmt,io,math,math/rand,os,sort,strconv,"
        "strings,sync,time,unicode,unicode/utf8,slices,maps,encoding/json,testing,"
        "container/heap,regexp,math/big,net/http,os/exec,sync/atomic,runtime,iter",
        metadata={"help": "packages compiled into the cache at startup"},
    )
    snippet_bytes: int = field(default=64 * KiB, metadata={"help": "max snippet size"})
    snippet_db: str = field(
        default="", metadata={"help": "snippet database (DATA_DIR/snippets.db)"}
    )
    snippet_sync: str = field(
        default="FULL", metadata={"help": "SQLite synchronous: FULL survives power loss"}
    )
    trust_forwarded_for: bool = field(
        default=False, metadata={"help": "key limits by X-Forwarded-For (behind a proxy)"}
    )

    # ---------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def gocache_path(self) -> Path:
        return Path(self.gocache_dir).resolve() if self.gocache_dir else self.data_path / "gocache"

    @property
    def binary_cache_path(self) -> Path:
        if self.binary_cache_dir:
            return Path(self.binary_cache_dir).resolve()
        return self.data_path / "bincache"

    @property
    def snippet_db_path(self) -> Path:
        if self.snippet_db:
            return Path(self.snippet_db).resolve()
        return self.data_path / "snippets.db"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def public_limits(self) -> dict[str, Any]:
        """What the `hello` frame tells clients."""
        return {
            "source_bytes": self.source_bytes,
            "run_seconds": self.run_seconds,
            "build_seconds": self.build_seconds,
            "output_bytes": self.output_bytes,
            "stdin_bytes": self.stdin_bytes,
            "memory_bytes": self.run_memory_bytes,
            "max_files": self.max_files,
            "queue_size": self.queue_size,
            "queue_wait_seconds": self.queue_wait_seconds,
        }


ENV_PREFIX = "GOFIDDLE_"


def _convert(kind: type, raw: str) -> Any:
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return kind(raw)


def _field_type(f: dataclasses.Field[Any]) -> type:
    return {"int": int, "float": float, "bool": bool, "str": str}[str(f.type)]


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in env:
            values[f.name] = _convert(_field_type(f), env[key])
    values.update(overrides)
    return Settings(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        kind = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def from_args(ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    overrides = {
        f.name: getattr(ns, f.name)
        for f in fields(Settings)
        if getattr(ns, f.name, None) is not None
    }
    return from_env(env, **overrides)
