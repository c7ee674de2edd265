"""Hostile input for the WARC reader: bytes cut, flipped and inserted at positions hypothesis
chooses, in a gzip WARC (one member per record, as Common Crawl writes) and in a plain one.

What the reader guarantees, and these tests assert:
- it always finishes: damage is reported in `errors`, never raised;
- it never yields a partial or altered record: each response it yields is one of the file's
  responses, whole (payload byte for byte, headers, offset), in file order;
- gzip: damage costs only the member it is in: every response in an intact member is yielded,
  and the response in a damaged member is reported at its offset instead of being yielded;
- plain (no checksums, no member boundaries to resume at): every response before the damage is
  yielded, and a file cut short reports the record it cuts at that record's offset;
- no offset is both yielded and reported, so `responses + lost` adds up per file.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.warc import WarcResponse, WarcResponseReader
from lmforge.tasks.data.warc_processing import process_warc_file
from lmforge.tasks.data.warc_writer import WarcWriter

# Small, so that the 70 kB page is oversized (its body is cut to the cap by design).
MAX_PAYLOAD = 4096
# Deterministic and bounded: the same examples on every run, seconds on two cores.
corruption_examples = settings(max_examples=200, deadline=None, derandomize=True, database=None)


def chunked(body: bytes, size: int = 100) -> bytes:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


PAGE = b"<html><body><p>A page about backups and restores.</p></body></html>"
BIG_PAGE = b"<html><body>" + b"<p>Paragraph of a long page, repeated.</p>" * 1700 + b"</html>"
FETCHES = [
    ("https://example.org/plain", PAGE, {}),
    ("https://example.org/chunked", chunked(PAGE * 3),
     {"headers": [("Content-Type", "text/html"), ("Transfer-Encoding", "chunked")]}),
    ("https://example.org/gzipped", gzip.compress(PAGE * 5, mtime=0),
     {"headers": [("Content-Type", "text/html"), ("Content-Encoding", "gzip")]}),
    ("https://example.org/missing", b"gone", {"status": 404, "reason": "Not Found"}),
    ("https://example.org/big", BIG_PAGE, {}),  # beyond fastwarc's 64 KiB buffer
    ("https://example.org/last", PAGE.replace(b"backups", b"printers"), {}),
]  # fmt: skip


def gzip_members(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each gzip member of an intact file."""
    spans, start = [], 0
    while start < len(data):
        inflater = zlib.decompressobj(31)
        inflater.decompress(data[start:])
        end = len(data) - len(inflater.unused_data)
        spans.append((start, end))
        start = end
    return spans


def plain_records(data: bytes) -> list[tuple[int, int]]:
    """(start, end of block) of each record of an intact plain WARC: a block ends where the
    CRLF CRLF closing its record begins (bodies here never contain a WARC header line)."""
    starts = [i for i in range(len(data)) if data.startswith(b"WARC/1.0\r\n", i)]
    return [(s, e - 4) for s, e in zip(starts, [*starts[1:], len(data)])]


def unplaced(response: WarcResponse) -> WarcResponse:
    """A response without where it was read from: what must survive byte for byte."""
    return replace(response, offset=0, warc_file="")


class Corpus:
    """The intact files, their responses, and each response's gzip member or plain block."""

    def __init__(self, directory):
        self.directory = directory
        path = directory / "intact.warc.gz"
        with WarcWriter(path, date=datetime(2025, 3, 14, tzinfo=timezone.utc)) as writer:
            writer.write_warcinfo()
            for url, body, kwargs in FETCHES:
                writer.write_fetch(url, body, **kwargs)
        self.gzip = path.read_bytes()
        self.members = gzip_members(self.gzip)
        self.plain = b"".join(zlib.decompressobj(31).decompress(self.gzip[s:e])
                              for s, e in self.members)  # fmt: skip
        self.records = plain_records(self.plain)
        self.gzip_responses, errors = self.read(self.gzip, ".warc.gz")
        assert errors == [] and [r.url for r in self.gzip_responses] == [f[0] for f in FETCHES]
        assert self.gzip_responses[4].oversized and len(self.gzip_responses[4].body) == MAX_PAYLOAD
        self.plain_responses, errors = self.read(self.plain, ".warc")
        assert errors == []
        assert list(map(unplaced, self.plain_responses)) == list(map(unplaced, self.gzip_responses))

    def read(self, data: bytes, suffix: str) -> tuple[list[WarcResponse], list[int]]:
        """The responses read from `data` as a file, and the offsets of the reported errors."""
        path = self.directory / f"damaged{suffix}"
        path.write_bytes(data)
        reader = WarcResponseReader(path, max_payload_bytes=MAX_PAYLOAD)
        return list(reader), [error.offset for error in reader.errors]

    def span(self, response: WarcResponse, spans: list[tuple[int, int]]) -> tuple[int, int]:
        return next(span for span in spans if span[0] == response.offset)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("warc-corruption"))


def positions(spans: list[tuple[int, int]], size: int) -> st.SearchStrategy[int]:
    """Anywhere in a file of `size` bytes, or near a record boundary, where damage tells most."""
    boundaries = sorted({p for span in spans for p in span if p < size})
    near = st.sampled_from(boundaries).flatmap(
        lambda b: st.integers(max(0, b - 24), min(size - 1, b + 24))
    )
    return st.one_of(st.integers(0, size - 1), near)


def assert_yielded_whole_and_in_order(yielded, originals, shift=lambda offset: offset):
    """Every yielded response is an original one, whole, at its (shifted) offset, in order."""
    expected = {shift(r.offset): unplaced(r) for r in originals}
    assert [expected.get(r.offset) for r in yielded] == list(map(unplaced, yielded))
    assert [r.offset for r in yielded] == sorted({r.offset for r in yielded})


@corruption_examples
@given(data=st.data())
def test_gzip_warc_cut_anywhere_yields_the_whole_records_and_reports_the_cut_one(corpus, data):
    cut = data.draw(positions(corpus.members, len(corpus.gzip)), label="cut")

    yielded, reported = corpus.read(corpus.gzip[:cut], ".warc.gz")

    whole = [r for r in corpus.gzip_responses if corpus.span(r, corpus.members)[1] <= cut]
    assert list(map(unplaced, yielded)) == list(map(unplaced, whole))
    assert_yielded_whole_and_in_order(yielded, corpus.gzip_responses)
    for response in corpus.gzip_responses:
        start, end = corpus.span(response, corpus.members)
        if start < cut < end:
            assert response.offset in reported
    assert not {r.offset for r in yielded} & set(reported)
    assert reported or cut in (s for s, _ in corpus.members)  # a cut between members is silent


@corruption_examples
@given(data=st.data())
def test_plain_warc_cut_anywhere_yields_the_whole_records_and_reports_the_cut_one(corpus, data):
    cut = data.draw(positions(corpus.records, len(corpus.plain)), label="cut")

    yielded, reported = corpus.read(corpus.plain[:cut], ".warc")

    whole = [r for r in corpus.plain_responses if corpus.span(r, corpus.records)[1] <= cut]
    assert list(map(unplaced, yielded)) == list(map(unplaced, whole))
    assert_yielded_whole_and_in_order(yielded, corpus.plain_responses)
    for response in corpus.plain_responses:
        start, block_end = corpus.span(response, corpus.records)
        if start < cut < block_end:
            assert response.offset in reported
    assert not {r.offset for r in yielded} & set(reported)


@corruption_examples
@given(data=st.data())
def test_gzip_warc_with_a_flipped_byte_loses_at_most_the_record_in_that_member(corpus, data):
    position = data.draw(positions(corpus.members, len(corpus.gzip)), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(corpus.gzip)
    damaged[position] ^= flip

    yielded, reported = corpus.read(bytes(damaged), ".warc.gz")

    assert_yielded_whole_and_in_order(yielded, corpus.gzip_responses)
    offsets = {r.offset for r in yielded}
    for response in corpus.gzip_responses:
        start, end = corpus.span(response, corpus.members)
        if start <= position < end:  # a flip in a header field zlib ignores leaves it whole
            assert (response.offset in offsets) != (response.offset in reported)
        else:
            assert response.offset in offsets
    assert not offsets & set(reported)


@corruption_examples
@given(data=st.data())
def test_gzip_warc_with_inserted_garbage_loses_at_most_the_record_it_splits(corpus, data):
    position = data.draw(positions(corpus.members, len(corpus.gzip)), label="position")
    garbage = data.draw(st.binary(min_size=1, max_size=64), label="garbage")
    damaged = corpus.gzip[:position] + garbage + corpus.gzip[position:]

    yielded, reported = corpus.read(damaged, ".warc.gz")

    def shift(offset: int) -> int:
        return offset + len(garbage) if offset >= position else offset

    assert_yielded_whole_and_in_order(yielded, corpus.gzip_responses, shift)
    offsets = {r.offset for r in yielded}
    for response in corpus.gzip_responses:
        start, end = corpus.span(response, corpus.members)
        if start < position < end:
            assert (response.offset in offsets) != (response.offset in reported)
        else:
            assert shift(response.offset) in offsets
    assert not offsets & set(reported)
    assert reported  # the garbage itself is reported, wherever it is


@corruption_examples
@given(data=st.data())
def test_plain_warc_with_a_flipped_byte_yields_every_record_before_it(corpus, data):
    # A plain WARC has no checksums: a flipped payload byte cannot be noticed, so only what
    # comes before the damage is promised.
    position = data.draw(positions(corpus.records, len(corpus.plain)), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(corpus.plain)
    damaged[position] ^= flip

    yielded, reported = corpus.read(bytes(damaged), ".warc")

    before = [r for r in corpus.plain_responses if corpus.span(r, corpus.records)[1] < position]
    assert list(map(unplaced, yielded[: len(before)])) == list(map(unplaced, before))
    assert not {r.offset for r in yielded} & set(reported)


# Through the per-file step: every response in the file is a candidate, a removal with its
# reason, or a read error at its offset, and nothing is two of these.
def corruptions(corpus: Corpus) -> dict[str, tuple[bytes, str]]:
    def into(span: tuple[int, int], fraction: float) -> int:
        return span[0] + int((span[1] - span[0]) * fraction)

    first_member = corpus.span(corpus.gzip_responses[0], corpus.members)
    last_member = corpus.span(corpus.gzip_responses[-1], corpus.members)
    last_block = corpus.span(corpus.plain_responses[-1], corpus.records)
    flipped = bytearray(corpus.gzip)
    flipped[into(first_member, 0.5)] ^= 0x55
    return {
        # Three quarters in, the cut leaves fastwarc a record with part of its payload.
        "gzip-cut-in-last-response": (corpus.gzip[: into(last_member, 0.75)], ".warc.gz"),
        "gzip-flipped-response": (bytes(flipped), ".warc.gz"),
        "gzip-stray-bytes": (corpus.gzip[: last_member[1]] + b"stray bytes\r\n"
                             + corpus.gzip[last_member[1] :], ".warc.gz"),
        "plain-cut-in-last-response": (corpus.plain[: into(last_block, 0.75)], ".warc"),
        "empty": (b"", ".warc.gz"),
        "not-a-warc": (b"<html><body>an error page</body></html>", ".warc.gz"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["gzip-cut-in-last-response", "gzip-flipped-response", "gzip-stray-bytes",
     "plain-cut-in-last-response", "empty", "not-a-warc"],
)  # fmt: skip
def test_process_warc_file_accounts_for_every_response_of_a_damaged_file(corpus, case, tmp_path):
    data, suffix = corruptions(corpus)[case]
    path = tmp_path / f"crawl{suffix}"
    path.write_bytes(data)

    stats = process_warc_file(path, DataConfig(max_payload_bytes=MAX_PAYLOAD), tmp_path).stats

    removed = sum(sum(step["dropped"].values()) for step in stats["steps"].values())
    assert stats["candidates"] + removed == stats["responses"]
    assert stats["steps"]["read"]["docs_in"] == stats["responses"]
    error_offsets = [error["offset"] for error in stats["read_errors"]]
    assert len(error_offsets) == len(set(error_offsets)) >= 1
    originals = corpus.plain_responses if suffix == ".warc" else corpus.gzip_responses
    lost = len({r.offset for r in originals} & set(error_offsets))
    if case in ("empty", "not-a-warc"):
        assert stats["responses"] == 0 and error_offsets == [0]
        assert "crawl.warc.gz" in stats["read_errors"][0]["message"]
    else:
        assert stats["responses"] + lost == len(FETCHES)
