"""Wire types of PROTOCOL.md (version 1): parsing of client frames, building of server frames.

Parsing never raises anything but `ProtocolError`, whose `code` is the `error.code` the
client gets; the session survives every bad frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

RUN_MODES = ("run", "test", "build", "vet")
Mode = Literal["run", "test", "build", "vet"]

# done.status values
OK = "ok"
EXIT = "exit"
BUILD_FAILED = "build_failed"
VET_FAILED = "vet_failed"
TESTS_FAILED = "tests_failed"
TIMEOUT = "timeout"
OUTPUT_LIMIT = "output_limit"
MEMORY_LIMIT = "memory_limit"
CANCELLED = "cancelled"
EXPIRED = "expired"
DEGRADED = "degraded"
INTERNAL_ERROR = "internal_error"

# error.code values
BAD_REQUEST = "bad_request"
TOO_LARGE = "too_large"
BUSY = "busy"
RATE_LIMITED = "rate_limited"
NOT_FOUND = "not_found"
UNAVAILABLE = "unavailable"


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, id: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id
        self.extra = extra

    def frame(self) -> dict[str, Any]:
        return error(self.code, self.message, self.id, **self.extra)


@dataclass(frozen=True)
class Run:
    id: str
    source: str
    mode: Mode = "run"
    vet: bool = True


@dataclass(frozen=True)
class Stdin:
    id: str
    data: str = ""
    eof: bool = False


@dataclass(frozen=True)
class Cancel:
    id: str


@dataclass(frozen=True)
class Format:
    id: str
    source: str
    imports: bool = False


@dataclass(frozen=True)
class Check:
    id: str
    source: str


@dataclass(frozen=True)
class Share:
    id: str
    source: str


@dataclass(frozen=True)
class Ping:
    id: str | None = None


ClientFrame = Run | Stdin | Cancel | Format | Check | Share | Ping


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], *,
           required: bool = True, default: Any = None, id: str | None = None) -> Any:
    if name not in obj or obj[name] is None:
        if required:
            raise ProtocolError(BAD_REQUEST, f"missing field '{name}'", id)
        return default
    value = obj[name]
    # bool is an int in Python; never accept it where a string or number is expected
    if isinstance(value, bool) and kind is not bool:
        raise ProtocolError(BAD_REQUEST, f"field '{name}' has the wrong type", id)
    if not isinstance(value, kind):
        raise ProtocolError(BAD_REQUEST, f"field '{name}' has the wrong type", id)
    return value


def parse(text: str | bytes, *, max_id_chars: int, max_source_bytes: int) -> ClientFrame:
    """Parse and validate one client frame."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(BAD_REQUEST, f"frame is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, "frame must be a JSON object")
    kind = obj.get("type")
    raw_id = obj.get("id")
    loose_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= max_id_chars else None
    if not isinstance(kind, str):
        raise ProtocolError(BAD_REQUEST, "missing or non-string field 'type'", loose_id)

    def job_id(required: bool = True) -> Any:
        value = _field(obj, "id", str, required=required, id=loose_id)
        if value is not None and not (0 < len(value) <= max_id_chars):
            raise ProtocolError(BAD_REQUEST, f"'id' must be 1 to {max_id_chars} characters")
        return value

    def source(id: str) -> str:
        value = _field(obj, "source", str, id=id)
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ProtocolError(BAD_REQUEST, "source is not valid Unicode text", id) from None
        if size > max_source_bytes:
            raise ProtocolError(
                TOO_LARGE, f"source is {size} bytes; the limit is {max_source_bytes}", id
            )
        return value

    if kind == "run":
        id = job_id()
        mode = _field(obj, "mode", str, required=False, default="run", id=id)
        if mode not in RUN_MODES:
            raise ProtocolError(BAD_REQUEST, f"unknown mode '{mode}'; one of {RUN_MODES}", id)
        vet = _field(obj, "vet", bool, required=False, default=True, id=id)
        return Run(id=id, source=source(id), mode=mode, vet=vet)
    if kind == "stdin":
        id = job_id()
        eof = _field(obj, "eof", bool, required=False, default=False, id=id)
        data = _field(obj, "data", str, required=not eof, default="", id=id)
        return Stdin(id=id, data=data, eof=eof)
    if kind == "cancel":
        return Cancel(id=job_id())
    if kind == "format":
        id = job_id()
        imports = _field(obj, "imports", bool, required=False, default=False, id=id)
        return Format(id=id, source=source(id), imports=imports)
    if kind == "check":
        id = job_id()
        return Check(id=id, source=source(id))
    if kind == "share":
        id = job_id()
        return Share(id=id, source=source(id))
    if kind == "ping":
        return Ping(id=job_id(required=False))
    raise ProtocolError(BAD_REQUEST, f"unknown frame type '{kind}'", loose_id)


# ---- server frames -------------------------------------------------------


def _frame(type_: str, **fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": type_}
    frame.update({k: v for k, v in fields.items() if v is not None})
    return frame


def hello(session: str, go_version: str, limits: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return _frame("hello", session=session, go_version=go_version, limits=limits, **extra)


def queued(id: str, position: int, queue_length: int, eta_ms: int | None) -> dict[str, Any]:
    return _frame("queued", id=id, position=position, queue_length=queue_length, eta_ms=eta_ms)


def started(id: str, phase: str) -> dict[str, Any]:
    return _frame("started", id=id, phase=phase)


def diagnostics(id: str, phase: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return _frame("diagnostics", id=id, phase=phase, items=items)


def output(id: str, stream: str, data: str) -> dict[str, Any]:
    return _frame("output", id=id, stream=stream, data=data)


def done(id: str, status: str, *, timings: dict[str, int], exit_code: int | None = None,
         cached: bool | None = None, message: str | None = None) -> dict[str, Any]:
    return _frame("done", id=id, status=status, exit_code=exit_code, timings=timings,
                  cached=cached, message=message)


def formatted(id: str, source: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return _frame("formatted", id=id, source=source, diagnostics=items)


def checked(id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return _frame("checked", id=id, diagnostics=items)


def shared(id: str, snippet: str, url: str) -> dict[str, Any]:
    return _frame("shared", id=id, snippet=snippet, url=url)


def error(code: str, message: str, id: str | None = None, **extra: Any) -> dict[str, Any]:
    return _frame("error", id=id, code=code, message=message, **extra)


def pong(id: str | None = None) -> dict[str, Any]:
    return _frame("pong", id=id)
