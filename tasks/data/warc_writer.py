"""Write gzip WARC/1.0 files shaped like Common Crawl's: one gzip member per record, and each
fetch stored as a `request`, a `response` and a `metadata` record that point at one another.

The output is reproducible: record IDs are UUIDv5 names of (file name, sequence number, record
type, URL), dates come from the caller, and gzip members carry mtime 0, so the same calls give
byte-identical files. Used to build the built-in sample corpus and test fixtures.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import urlsplit

from lmforge import __version__

CRLF = b"\r\n"
WARC_VERSION = b"WARC/1.0"
DEFAULT_HTML_HEADERS: tuple[tuple[str, str], ...] = (("Content-Type", "text/html; charset=utf-8"),)
# Fixed namespace so record IDs depend only on what is written, never on the machine.
RECORD_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://lmforge.invalid/warc-record")


def sha1_base32(data: bytes) -> str:
    """`sha1:` + base32 digest, the form Common Crawl uses for block and payload digests."""
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode("ascii")


def _check_header_value(name: str, value: str) -> str:
    # A CR or LF inside a value would end the header block early and corrupt the record.
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name!r} has a line break in its value {value!r}")
    return value


class WarcWriter:
    """Writes a gzip WARC/1.0 file, one gzip member per record.

    `path` is created (or truncated). `date` fixes the crawl time for reproducible output
    (a naive datetime is taken as UTC); the n-th fetch is dated `date + n seconds`. Without
    `date`, the current time is used. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: str | os.PathLike[str], *, date: datetime | None = None) -> None:
        self.path = Path(path)
        if date is None:
            date = datetime.now(timezone.utc).replace(microsecond=0)
        elif date.tzinfo is None:
            date = date.replace(tzinfo=timezone.utc)
        self._start = date.astimezone(timezone.utc)
        self._sequence = 0  # records written, part of each record ID
        self._fetches = 0  # fetches written, spaces their dates one second apart
        self._warcinfo_id: str | None = None
        self._file: BinaryIO | None = open(self.path, "wb")

    def __enter__(self) -> WarcWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Flushes and closes the file; calling it again does nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def write_warcinfo(self, fields: dict[str, str] | None = None) -> None:
        """Writes the `warcinfo` record that later records name in `WARC-Warcinfo-ID`.

        `fields` become the record's `application/warc-fields` body (defaults describe lmforge).
        Raises ValueError if a warcinfo record was already written to this file.
        """
        if self._warcinfo_id is not None:
            raise ValueError(f"{self.path}: a warcinfo record was already written")
        if fields is None:
            fields = {
                "software": f"lmforge/{__version__}",
                "format": "WARC File Format 1.0",
                "conformsTo": "https://iipc.github.io/warc-specifications/specifications/"
                "warc-format/warc-1.0/",
            }
        body = _warc_fields(fields)
        record_id = self._next_record_id("warcinfo", self.path.name)
        self._write_record(
            [
                ("WARC-Type", "warcinfo"),
                ("WARC-Date", _warc_date(self._start)),
                ("WARC-Record-ID", record_id),
                ("WARC-Filename", self.path.name),
                ("Content-Type", "application/warc-fields"),
                ("WARC-Block-Digest", sha1_base32(body)),
            ],
            body,
        )
        self._warcinfo_id = record_id

    def write_fetch(
        self,
        url: str,
        body: bytes,
        *,
        status: int = 200,
        reason: str = "OK",
        headers: Sequence[tuple[str, str]] = DEFAULT_HTML_HEADERS,
    ) -> str:
        """Writes one fetch of `url`: a `request`, a `response` and a `metadata` record.

        The response block is an HTTP/1.1 status line, `headers` (a `Content-Length` header is
        added when absent) and `body` as-is. Returns the response's `WARC-Record-ID`.
        Raises ValueError for a URL that is not absolute http(s), a status outside 100-599,
        or a header value with a line break or characters outside Latin-1.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        _check_header_value("WARC-Target-URI", url)
        if not 100 <= status <= 599:
            raise ValueError(f"HTTP status {status} is outside 100-599 (url {url})")
        date = _warc_date(self._start + timedelta(seconds=self._fetches))
        self._fetches += 1

        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request_block = _http_block(
            f"GET {target} HTTP/1.1",
            [
                ("Host", parts.netloc),
                ("User-Agent", f"lmforge-sample/{__version__}"),
                ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
            ],
            b"",
        )
        request_id = self._next_record_id("request", url)
        self._write_record(
            [
                ("WARC-Type", "request"),
                ("WARC-Date", date),
                ("WARC-Record-ID", request_id),
                *self._warcinfo_header(),
                ("Content-Type", "application/http; msgtype=request"),
                ("WARC-Target-URI", url),
                ("WARC-Block-Digest", sha1_base32(request_block)),
            ],
            request_block,
        )

        response_headers = list(headers)
        if not any(name.lower() == "content-length" for name, _ in response_headers):
            response_headers.append(("Content-Length", str(len(body))))
        response_block = _http_block(f"HTTP/1.1 {status} {reason}", response_headers, body)
        response_id = self._next_record_id("response", url)
        self._write_record(
            [
                ("WARC-Type", "response"),
                ("WARC-Date", date),
                ("WARC-Record-ID", response_id),
                *self._warcinfo_header(),
                ("WARC-Concurrent-To", request_id),
                ("Content-Type", "application/http; msgtype=response"),
                ("WARC-Target-URI", url),
                ("WARC-Payload-Digest", sha1_base32(body)),
                ("WARC-Block-Digest", sha1_base32(response_block)),
            ],
            response_block,
        )

        # Deterministic stand-in for the fetch time Common Crawl records here.
        fetch_ms = 40 + int.from_bytes(hashlib.sha1(url.encode("utf-8")).digest()[:2], "big") % 900
        metadata_block = _warc_fields({"fetchTimeMs": str(fetch_ms)})
        self._write_record(
            [
                ("WARC-Type", "metadata"),
                ("WARC-Date", date),
                ("WARC-Record-ID", self._next_record_id("metadata", url)),
                *self._warcinfo_header(),
                ("WARC-Concurrent-To", response_id),
                ("Content-Type", "application/warc-fields"),
                ("WARC-Target-URI", url),
                ("WARC-Block-Digest", sha1_base32(metadata_block)),
            ],
            metadata_block,
        )
        return response_id

    def _warcinfo_header(self) -> list[tuple[str, str]]:
        return [("WARC-Warcinfo-ID", self._warcinfo_id)] if self._warcinfo_id else []

    def _next_record_id(self, record_type: str, url: str) -> str:
        name = f"{self.path.name}\n{self._sequence}\n{record_type}\n{url}"
        self._sequence += 1
        return f"<urn:uuid:{uuid.uuid5(RECORD_ID_NAMESPACE, name)}>"

    def _write_record(self, warc_headers: list[tuple[str, str]], block: bytes) -> None:
        lines = [WARC_VERSION]
        # Content-Length goes right after the record ID, where Common Crawl puts it.
        for name, value in warc_headers:
            lines.append(f"{name}: {_check_header_value(name, value)}".encode("utf-8"))
            if name == "WARC-Record-ID":
                lines.append(f"Content-Length: {len(block)}".encode("ascii"))
        record = CRLF.join(lines) + CRLF + CRLF + block + CRLF + CRLF
        # mtime=0 keeps the gzip header free of the wall clock, so output is reproducible.
        self._require_open().write(gzip.compress(record, compresslevel=6, mtime=0))

    def _require_open(self) -> BinaryIO:
        if self._file is None:
            raise ValueError(f"{self.path}: the WARC writer is closed")
        return self._file


def _warc_date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _warc_fields(fields: dict[str, str]) -> bytes:
    lines = [f"{name}: {_check_header_value(name, value)}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _http_block(first_line: str, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    lines = [first_line, *(f"{n}: {_check_header_value(n, v)}" for n, v in headers)]
    text = "\r\n".join(lines) + "\r\n\r\n"
    try:
        head = text.encode("latin-1")
    except UnicodeEncodeError as error:
        raise ValueError(f"HTTP header outside Latin-1 in {first_line!r}: {error}") from None
    return head + body
