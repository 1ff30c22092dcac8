"""A minimal Server-Sent Events reader (the subset agentd sends: `data:`
lines, blank-line separated, `:` comments)."""

from __future__ import annotations

from typing import Iterable, Iterator


def lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Splits a byte stream into lines at LF (dropping a CR before it).
    Only LF and CRLF are split on: text inside an event may hold characters
    that str.splitlines() would treat as line breaks (U+2028 ...)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8")


def events(chunks: Iterable[bytes]) -> Iterator[str]:
    """Yields the data of each complete event. An event cut off by the end
    of the stream is dropped, as the SSE specification says."""
    data: list[str] = []
    for line in lines(chunks):
        if not line:
            if data:
                yield "\n".join(data)
            data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
