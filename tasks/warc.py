"""Read the HTTP response records of a WARC file, surviving damaged records.

Common Crawl writes one gzip member per record, so a damaged member costs one record, not the
file: the fast path streams the whole file through fastwarc; when it fails, the slow path walks
the gzip members one by one from the last good record, finds the damaged one, logs it, and hands
the rest of the file back to the fast path.
"""

from __future__ import annotations

import io
import logging
import mmap
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType

log = logging.getLogger(__name__)

# Common Crawl truncates payloads at 5 MiB (1 MiB before 2025); a page past that is rarely prose.
DEFAULT_MAX_PAYLOAD_BYTES = 5 * 2**20

GZIP_MAGIC = b"\x1f\x8b\x08"
# Exceptions that mean "this record's bytes are bad", as opposed to a bug in this module.
RECORD_ERRORS = (OSError, ValueError, EOFError, UnicodeError, zlib.error)
_INFLATE_CHUNK = 1 << 16
_WARC_HEADER_ALLOWANCE = 1 << 16  # WARC + HTTP headers kept beside the payload when re-parsing


@dataclass(frozen=True)
class WarcResponse:
    """An HTTP response record; `body` holds at most the payload cap (`oversized`: it was cut)."""

    url: str
    record_id: str
    warc_file: str
    offset: int
    status: int | None
    content_type: str | None
    charset: str | None
    body: bytes
    date: str | None
    oversized: bool = False
    content_language: str | None = None  # the HTTP Content-Language header


@dataclass(frozen=True)
class ReadError:
    """A record that could not be read: where it starts and what was wrong with it."""

    warc_file: str
    offset: int
    message: str


def parse_content_type(value: str | None) -> tuple[str | None, str | None]:
    """`text/html; charset="KOI8-R"` -> (`text/html`, `koi8-r`); missing parts are None."""
    if not value:
        return None, None
    mime, *params = value.split(";")
    charset = None
    for param in params:
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset":
            charset = val.strip().strip("\"'").strip().lower() or None
    return (mime.strip().lower() or None), charset


@dataclass
class WarcResponseReader:
    """Iterate the response records of one (gzip or plain) WARC file.

    Iterating never raises for damaged content: each damaged record is logged with the file and
    byte offset, appended to `errors`, and skipped; reading resumes at the next intact gzip member.
    (A plain, uncompressed WARC has no member boundaries to resume at: reading stops there.)
    A missing or unreadable path raises FileNotFoundError when the reader is created.
    `name`: the file name responses and errors record (default: the path's name; a remote file
    read from a local spool copy passes its own name).
    """

    path: Path
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    errors: list[ReadError] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"WARC file {self.path} does not exist (check the input path)")
        if self.max_payload_bytes <= 0:
            raise ValueError(f"max_payload_bytes must be positive, got {self.max_payload_bytes}")
        self.name = self.name or self.path.name

    def __iter__(self) -> Iterator[WarcResponse]:
        self.errors = []
        if self.path.stat().st_size == 0:
            return
        with (
            open(self.path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            # The suffix too: a file whose first member is damaged is still a gzip WARC.
            is_gzip = data[:2] == GZIP_MAGIC[:2] or self.name.endswith(".gz")
            start: int | None = 0
            while start is not None:
                last_yielded = -1
                try:
                    handle.seek(start)
                    for record in self._archive_iterator(handle):
                        response = self._to_response(record, record.stream_pos)
                        if response is not None:
                            last_yielded = response.offset
                            yield response
                    # fastwarc ends quietly at a member cut short at the end of the file: walk
                    # the tail from the last response to be sure nothing was lost there.
                    failure = None
                except RECORD_ERRORS as exc:
                    failure = exc
                    if not is_gzip:
                        self._record_error(max(last_yielded, start), f"{exc}; stopped reading")
                        break
                if not is_gzip:
                    break
                start = yield from self._walk(data, max(last_yielded, start), last_yielded, failure)

    def _archive_iterator(self, stream) -> ArchiveIterator:
        return ArchiveIterator(
            stream, record_types=WarcRecordType.response, parse_http=True, auto_decode="all"
        )

    def _walk(
        self, data: mmap.mmap, walk_from: int, last_yielded: int, failure: Exception | None
    ) -> Iterator[WarcResponse]:
        """Walk gzip members from `walk_from` to the first damaged one, yielding the responses
        past `last_yielded` that fastwarc did not reach; return where the fast path resumes, or
        None at the end of the file. `failure` is what stopped the fast path (None at its end)."""
        offset = walk_from
        while offset < len(data):
            member = _inflate_member(data, offset, self.max_payload_bytes + _WARC_HEADER_ALLOWANCE)
            if member is None:
                self._record_error(offset, f"damaged gzip member ({failure or 'cut short'})")
                return _next_intact_member(data, offset + 1)
            content, end = member
            if offset > last_yielded:  # the record fastwarc last gave us needs no second look
                try:
                    for record in self._archive_iterator(io.BytesIO(content)):
                        response = self._to_response(record, offset)
                        if response is not None:
                            yield response
                except RECORD_ERRORS as member_exc:
                    self._record_error(offset, f"invalid WARC record ({member_exc})")
                    return end
            offset = end
        if failure is not None:
            self._record_error(walk_from, f"unreadable data after this offset ({failure})")
        return None

    def _to_response(self, record: WarcRecord, offset: int) -> WarcResponse | None:
        url = record.headers.get("WARC-Target-URI")
        record_id = record.record_id
        if not url or not record_id:
            self._record_error(offset, "response record without WARC-Target-URI or WARC-Record-ID")
            return None
        status = None
        content_type = charset = content_language = None
        if record.is_http and record.http_headers is not None:
            status = record.http_headers.status_code or None
            content_type, charset = parse_content_type(record.http_headers.get("Content-Type"))
            content_language = record.http_headers.get("Content-Language")
        body = record.reader.read(self.max_payload_bytes + 1)
        return WarcResponse(
            url=url.strip(),
            record_id=record_id.strip().strip("<>"),
            warc_file=self.name,
            offset=offset,
            status=status,
            content_type=content_type,
            charset=charset,
            body=body[: self.max_payload_bytes],
            date=record.headers.get("WARC-Date"),
            oversized=len(body) > self.max_payload_bytes,
            content_language=content_language,
        )

    def _record_error(self, offset: int, message: str) -> None:
        if any(known.offset == offset for known in self.errors):
            return  # the slow path can meet a record the fast path already reported
        error = ReadError(self.name, offset, message)
        log.warning("%s: skipped a record at byte offset %d: %s", self.name, error.offset, message)
        self.errors.append(error)


def _inflate_member(data: mmap.mmap, start: int, keep: int) -> tuple[bytes, int] | None:
    """Inflate the gzip member at `start`: (its first `keep` bytes, offset just past it), or None
    when the member is damaged or truncated. Output beyond `keep` is discarded as it is produced,
    so a decompression bomb costs time, not memory."""
    if data[start : start + 3] != GZIP_MAGIC:
        return None
    inflater = zlib.decompressobj(31)
    kept = bytearray()
    position = start
    try:
        while not inflater.eof:
            chunk = data[position : position + _INFLATE_CHUNK]
            if not chunk:
                return None
            position += len(chunk)
            pending = chunk
            while pending and not inflater.eof:
                out = inflater.decompress(pending, _INFLATE_CHUNK)
                pending = inflater.unconsumed_tail
                if len(kept) < keep:
                    kept += out[: keep - len(kept)]
    except zlib.error:
        return None
    return bytes(kept), position - len(inflater.unused_data)


def _next_intact_member(data: mmap.mmap, start: int) -> int | None:
    """Offset of the first gzip member at or after `start` that inflates to a WARC record."""
    position = data.find(GZIP_MAGIC, start)
    while position != -1:
        member = _inflate_member(data, position, 8)
        if member is not None and member[0].startswith(b"WARC/"):
            return position
        position = data.find(GZIP_MAGIC, position + 1)
    return None
