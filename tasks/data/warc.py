"""Read the HTTP response records of a WARC file, surviving damaged records.

Common Crawl writes one gzip member per record, so a damaged member costs one record, not the
file: the fast path streams the whole file through fastwarc, holding each response back until
fastwarc has read past its member; when it fails, or reaches the end of the file, the slow path
walks the gzip members one by one from the held response, finds the damaged one, logs it, and
hands the rest of the file back to the fast path. A record is yielded only if it was read whole.
"""

from __future__ import annotations

import io
import logging
import mmap
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType

log = logging.getLogger(__name__)

# Common Crawl truncates payloads at 5 MiB (1 MiB before 2025); a page past that is rarely prose.
DEFAULT_MAX_PAYLOAD_BYTES = 5 * 2**20

GZIP_MAGIC = b"\x1f\x8b\x08"
# Exceptions that mean "this record's bytes are bad", as opposed to a bug in this module.
RECORD_ERRORS = (OSError, ValueError, EOFError, UnicodeError, zlib.error)
DAMAGED_MEMBER_ERRORS = (ValueError, EOFError, zlib.error)  # what `_inflate_member` raises
_INFLATE_CHUNK = 1 << 16
_WARC_HEADER_ALLOWANCE = 1 << 16  # WARC + HTTP headers kept beside the payload when re-parsing
_MAX_WARC_HEADER = 32 << 10  # fastwarc's limit on a WARC header's length


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

    A response is yielded only if it was read whole: in a gzip file its member inflated to the
    end with a matching CRC, in a plain file its block lies inside the file, and in either a
    payload fastwarc did not decode is as long as the record's Content-Length says.
    Iterating never raises for damaged content: each damaged record, and a file that is empty
    or not a WARC file, is logged with the file and byte offset, appended to `errors`, and
    skipped; reading resumes at the next intact gzip member. (A plain, uncompressed WARC has no
    member boundaries to resume at, and no checksums: reading stops at the first record that is
    cut or unreadable, and bytes changed in place go unnoticed.)
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
            self._record_error(0, f"{self.name} is empty: expected a WARC file (.warc.gz or "
                               ".warc); check that it was downloaded or copied completely")
            return
        with (
            open(self.path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            if data[:2] == GZIP_MAGIC[:2]:
                yield from self._read_gzip(data, handle, 0)
            elif data[:5] == b"WARC/":
                yield from self._read_plain(data, handle)
            elif (first_member := _next_intact_member(data, 1)) is not None:
                self._record_error(0, "damaged gzip member (no gzip header at the file's start)")
                yield from self._read_gzip(data, handle, first_member)
            else:
                self._record_error(0, f"{self.name} is not a WARC file: it starts with "
                                   f"{data[:16]!r} where a gzip header (1f 8b) or 'WARC/' was "
                                   "expected, and no gzip member in it holds a WARC record; "
                                   "check that the input is a .warc.gz or .warc file")

    def _read_gzip(
        self, data: mmap.mmap, handle: BinaryIO, start: int | None
    ) -> Iterator[WarcResponse]:
        while start is not None:
            # The last response read is held back until fastwarc has read past its gzip member
            # (and so checked its CRC): fastwarc ends quietly at a member cut short by the end
            # of the file, and can fail a member after yielding the record inside it.
            held: WarcResponse | None = None
            failure: Exception | None = None
            try:
                handle.seek(start)
                for record in self._archive_iterator(handle):
                    response = self._to_response(record, record.stream_pos)
                    if response is not None:
                        if held is not None:
                            yield held
                        held = response
            except RECORD_ERRORS as exc:
                failure = exc
            if held is not None and data[held.offset : held.offset + 3] != GZIP_MAGIC:
                # One gzip stream for the whole file, not a member per record as Common Crawl
                # writes: one checksum for all records, no member to resume at. Payload lengths
                # are all that checks a record; after a failure the last one is not trusted.
                if failure is None:
                    yield held
                else:
                    self._record_error(held.offset, "unreadable data in the file's single gzip "
                                       f"stream at or after this record ({failure}); stopped")
                return
            start = yield from self._walk(data, start if held is None else held.offset)

    def _read_plain(self, data: mmap.mmap, handle: BinaryIO) -> Iterator[WarcResponse]:
        """A plain WARC has no member boundaries to resume at: stop at the first record that is
        cut short or unreadable. Every record is checked, so that one cut before its type is
        known is reported too."""
        position = 0  # just past the last whole record
        try:
            for record in ArchiveIterator(handle, parse_http=False):
                block_end = _block_end(data, record)
                if block_end is None or block_end > len(data):
                    self._record_error(record.stream_pos, "record cut short by the end of the file")
                    return
                if record.record_type == WarcRecordType.response:
                    record.parse_http(auto_decode="all")
                    response = self._to_response(record, record.stream_pos)
                    if response is not None:
                        yield response
                position = block_end
        except RECORD_ERRORS as exc:
            self._record_error(_skip_blank_lines(data, position), f"unreadable WARC record "
                               f"({exc}); a plain .warc has no gzip members to resume at: stopped")
            return
        rest = _skip_blank_lines(data, position)
        if rest < len(data):
            self._record_error(rest, "record cut short by the end of the file")

    def _archive_iterator(self, stream) -> ArchiveIterator:
        return ArchiveIterator(
            stream, record_types=WarcRecordType.response, parse_http=True, auto_decode="all"
        )

    def _walk(self, data: mmap.mmap, offset: int) -> Iterator[WarcResponse]:
        """Walk gzip members from `offset`, where no response has been yielded yet, to the first
        damaged one, yielding their responses; return where the fast path resumes, or None at
        the end of the file."""
        while offset < len(data):
            try:
                content, end = _inflate_member(
                    data, offset, self.max_payload_bytes + _WARC_HEADER_ALLOWANCE
                )
            except DAMAGED_MEMBER_ERRORS as damage:
                self._record_error(offset, f"damaged gzip member ({damage})")
                return _next_intact_member(data, offset + 1)
            try:
                for record in self._archive_iterator(io.BytesIO(content)):
                    response = self._to_response(record, offset)
                    if response is not None:
                        yield response
            except RECORD_ERRORS as member_exc:
                self._record_error(offset, f"invalid WARC record ({member_exc})")
                return end
            offset = end
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
        oversized = len(body) > self.max_payload_bytes
        # Lengths compare only for a payload fastwarc did not decode (chunked, gzip...).
        if not oversized and len(body) < record.content_length and not _was_decoded(record):
            self._record_error(offset, f"record cut short: {len(body)} of the "
                               f"{record.content_length} payload bytes it declares")
            return None
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
            oversized=oversized,
            content_language=content_language,
        )

    def _record_error(self, offset: int, message: str) -> None:
        if any(known.offset == offset for known in self.errors):
            return  # the slow path can meet a record the fast path already reported
        error = ReadError(self.name, offset, message)
        log.warning("%s: skipped the data at byte offset %d: %s", self.name, offset, message)
        self.errors.append(error)


def _was_decoded(record: WarcRecord) -> bool:
    """Whether fastwarc decoded the HTTP payload, so that its length is not the record's."""
    headers = record.http_headers
    if not record.is_http or headers is None:
        return False
    encodings = (headers.get("Content-Encoding") or "", headers.get("Transfer-Encoding") or "")
    return any(value.strip().lower() not in ("", "identity") for value in encodings)


def _block_end(data: mmap.mmap, record: WarcRecord) -> int | None:
    """Offset just past the block of `record`, read from the uncompressed `data`, from where
    its WARC header ends and its Content-Length; None when either is missing."""
    header_end = data.find(b"\r\n\r\n", record.stream_pos, record.stream_pos + _MAX_WARC_HEADER)
    try:
        length = int(record.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return None if header_end == -1 or length < 0 else header_end + 4 + length


def _skip_blank_lines(data: mmap.mmap, position: int) -> int:
    """The first offset at or after `position` that is not CR or LF (records end in CRLF CRLF)."""
    while position < len(data) and data[position] in b"\r\n":
        position += 1
    return position


def _inflate_member(data: mmap.mmap, start: int, keep: int) -> tuple[bytes, int]:
    """Inflate the gzip member at `start`: (its first `keep` bytes, offset just past it). Output
    beyond `keep` is discarded as it is produced, so a decompression bomb costs time, not
    memory. Raises one of DAMAGED_MEMBER_ERRORS, saying what is wrong, when the member is
    damaged or cut short (zlib checks its CRC and length)."""
    if data[start : start + 3] != GZIP_MAGIC:
        raise ValueError("no gzip header at this offset")
    inflater = zlib.decompressobj(31)
    kept = bytearray()
    position = start
    while not inflater.eof:
        chunk = data[position : position + _INFLATE_CHUNK]
        if not chunk:
            raise EOFError("cut short by the end of the file")
        position += len(chunk)
        pending = chunk
        while pending and not inflater.eof:
            out = inflater.decompress(pending, _INFLATE_CHUNK)
            pending = inflater.unconsumed_tail
            if len(kept) < keep:
                kept += out[: keep - len(kept)]
    return bytes(kept), position - len(inflater.unused_data)


def _next_intact_member(data: mmap.mmap, start: int) -> int | None:
    """Offset of the first gzip member at or after `start` that inflates to a WARC record."""
    position = data.find(GZIP_MAGIC, start)
    while position != -1:
        try:
            if _inflate_member(data, position, 8)[0].startswith(b"WARC/"):
                return position
        except DAMAGED_MEMBER_ERRORS:
            pass
        position = data.find(GZIP_MAGIC, position + 1)
    return None
