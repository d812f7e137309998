"""Benchmark inputs: distinct hello-world programs (so no cache of any kind can answer)."""

from __future__ import annotations

import uuid

HELLO = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello, world %s")\n}\n'


def distinct_hellos(n: int, tag: str | None = None) -> list[str]:
    """n hello worlds that differ in one string constant; `tag` keeps a run's set apart
    from any earlier run's (the binary cache survives restarts)."""
    tag = tag or uuid.uuid4().hex[:8]
    return [HELLO % f"{tag}-{i}" for i in range(n)]


def expected_output(src: str) -> str:
    start = src.index('Println("') + len('Println("')
    return src[start:src.index('")', start)] + "\n"
