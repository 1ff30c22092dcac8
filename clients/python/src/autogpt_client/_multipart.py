"""A multipart/form-data body streamed from a file, so that uploads of up to
agentd's 100 MB limit are not held in memory."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

FileSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]
CHUNK = 1 << 20


class MultipartUpload:
    """One `file` part plus text fields (sent before the file). Passed as
    `data=` to requests: __len__ becomes Content-Length and the body is
    streamed from __iter__. Iterating again starts over, so that a retried
    request sends the whole body again."""

    def __init__(self, source: FileSource, file_name: Optional[str] = None, fields: Optional[dict] = None):
        self._path: Optional[Path] = None
        self._bytes: Optional[bytes] = None
        self._stream: Optional[BinaryIO] = None
        self._stream_start = 0
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._bytes = bytes(source)
            size = len(self._bytes)
        elif isinstance(source, (str, os.PathLike)):
            self._path = Path(source)
            size = self._path.stat().st_size
            file_name = file_name or self._path.name
        else:
            self._stream, self._stream_start, size = _seekable(source)
            file_name = file_name or Path(getattr(source, "name", "") or "upload.bin").name
        if not file_name:
            raise ValueError("file_name is required when uploading bytes")
        self.file_name = file_name
        self.boundary = "autogpt-client-" + uuid.uuid4().hex
        self._head = b"".join(self._field(k, v) for k, v in (fields or {}).items()) + (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_quote(file_name)}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._length = len(self._head) + size + len(self._tail)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        yield from self._file_chunks()
        yield self._tail

    def _file_chunks(self) -> Iterator[bytes]:
        if self._bytes is not None:
            for i in range(0, len(self._bytes), CHUNK):
                yield self._bytes[i : i + CHUNK]
            return
        if self._path is not None:
            with open(self._path, "rb") as f:
                yield from iter(lambda: f.read(CHUNK), b"")
            return
        self._stream.seek(self._stream_start)
        yield from iter(lambda: self._stream.read(CHUNK), b"")

    def _field(self, name: str, value: str) -> bytes:
        return (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode()
            + str(value).encode()
            + b"\r\n"
        )


def _seekable(stream: BinaryIO) -> tuple[BinaryIO, int, int]:
    """(stream, start position, size left). A stream that cannot seek is read
    into memory, since its size must be known and a retry must resend it."""
    try:
        start = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(start)
        return stream, start, end - start
    except (AttributeError, OSError, io.UnsupportedOperation):
        data = stream.read()
        return io.BytesIO(data), 0, len(data)


def _quote(name: str) -> str:
    """Quotes a name for a Content-Disposition parameter as browsers do
    (HTML5): UTF-8 as is, with the three characters that would break it escaped."""
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
