"""Reading WARC response records, including from damaged files."""

from __future__ import annotations

import gzip
import random
import zlib
from datetime import datetime, timezone

import pytest
from lmforge.tasks.data.warc import WarcResponseReader, parse_content_type
from data_stage_fixtures import CorruptingWarcWriter

DATE = datetime(2025, 3, 14, tzinfo=timezone.utc)


def write_warc(path, fetches, *, corrupt_after: int | None = None, corruption: bytes = b""):
    """Write `fetches` (url, body, kwargs); plant `corruption` after fetch `corrupt_after`."""
    ids = []
    with CorruptingWarcWriter(path, date=DATE) as writer:
        writer.write_warcinfo()
        for index, (url, body, kwargs) in enumerate(fetches):
            ids.append(writer.write_fetch(url, body, **kwargs))
            if index == corrupt_after:
                writer.write_raw(corruption)
    return ids


def pages(count: int):
    return [
        (f"https://example.org/{n}.html", f"<p>page {n}</p>".encode(), {}) for n in range(count)
    ]


def test_reader_yields_only_response_records_with_their_http_fields(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    ids = write_warc(
        path,
        [
            ("https://example.org/", b"<html><p>hi</p></html>", {}),
            ("https://example.org/missing", b"gone", {"status": 404, "reason": "Not Found"}),
            (
                "https://example.org/ru",
                b"\xcf\xf0\xe8\xe2\xe5\xf2",
                {"headers": [("Content-Type", 'text/html; charset="Windows-1251"')]},
            ),
        ],
    )
    reader = WarcResponseReader(path)
    responses = list(reader)

    assert [r.url for r in responses] == [
        "https://example.org/",
        "https://example.org/missing",
        "https://example.org/ru",
    ]
    assert [r.record_id for r in responses] == [i.strip("<>") for i in ids]
    assert [r.status for r in responses] == [200, 404, 200]
    assert responses[0].content_type == "text/html" and responses[0].charset == "utf-8"
    assert responses[2].charset == "windows-1251"
    assert responses[0].body == b"<html><p>hi</p></html>"
    assert [r.date for r in responses] == [f"2025-03-14T00:00:0{n}Z" for n in range(3)]
    assert all(r.warc_file == "crawl.warc.gz" for r in responses)
    assert reader.errors == []
    # Offsets point at the gzip member holding the record, as in Common Crawl's index.
    data = path.read_bytes()
    for response in responses:
        record = zlib.decompressobj(31).decompress(data[response.offset :])
        assert record.startswith(b"WARC/1.0") and response.url.encode() in record


@pytest.mark.parametrize(
    "corruption",
    [
        b"\x1f\x8b\x08\x00" + b"not deflate data" * 8,  # gzip header, garbage body
        gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\n\r\n" + b"x" * 500)[:60],  # truncated
        b"plain bytes between members\r\n",
    ],
    ids=["garbage-member", "truncated-member", "stray-bytes"],
)
def test_reader_skips_a_damaged_member_and_reads_the_records_after_it(tmp_path, corruption):
    path = tmp_path / "damaged.warc.gz"
    write_warc(path, pages(6), corrupt_after=2, corruption=corruption)

    reader = WarcResponseReader(path)
    urls = [r.url for r in reader]

    assert urls == [f"https://example.org/{n}.html" for n in range(6)]
    assert len(reader.errors) == 1
    error = reader.errors[0]
    assert error.warc_file == "damaged.warc.gz"
    assert path.read_bytes()[error.offset :].startswith(corruption[:8])


def test_reader_reports_an_invalid_record_inside_an_intact_gzip_member(tmp_path):
    path = tmp_path / "invalid.warc.gz"
    bad_record = gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: x\r\n\r\n")
    write_warc(path, pages(4), corrupt_after=1, corruption=bad_record)

    reader = WarcResponseReader(path)
    urls = [r.url for r in reader]

    assert urls == [f"https://example.org/{n}.html" for n in range(4)]
    assert len(reader.errors) == 1


@pytest.mark.parametrize("cut_into_member", [30, 150])
def test_reader_reports_a_last_response_cut_off_by_the_end_of_the_file(tmp_path, cut_into_member):
    path = tmp_path / "cut.warc.gz"
    write_warc(path, pages(5))
    last_offset = list(WarcResponseReader(path))[-1].offset
    path.write_bytes(path.read_bytes()[: last_offset + cut_into_member])

    reader = WarcResponseReader(path)
    urls = [r.url for r in reader]

    assert urls == [f"https://example.org/{n}.html" for n in range(4)]
    assert [e.offset for e in reader.errors] == [last_offset]


@pytest.mark.corpus
def test_a_response_cut_mid_member_in_a_real_crawl_file_is_reported_and_not_kept(
    tmp_path, shared_dir
):
    source = shared_dir / "corpus" / "webdocs" / "webdocs-00000.warc.gz"
    data = source.read_bytes()
    intact = list(WarcResponseReader(source))
    # The longest page among the first hundred: half its member still inflates to part of it.
    victim = max(intact[:100], key=lambda r: len(r.body))
    inflater = zlib.decompressobj(31)
    inflater.decompress(data[victim.offset :])
    member_end = len(data) - len(inflater.unused_data)
    path = tmp_path / source.name
    path.write_bytes(data[: (victim.offset + member_end) // 2])

    reader = WarcResponseReader(path)
    kept = list(reader)

    assert kept == intact[: intact.index(victim)]
    assert [e.offset for e in reader.errors] == [victim.offset]


def test_a_record_longer_than_its_gzip_member_is_reported_and_not_kept(tmp_path):
    path = tmp_path / "short.warc.gz"
    short_record = gzip.compress(
        b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: https://example.org/short\r\n"
        b"WARC-Record-ID: <urn:uuid:00000000-0000-4000-8000-000000000001>\r\n"
        b"Content-Length: 500\r\nContent-Type: application/http; msgtype=response\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>only part</p>\r\n\r\n"
    )
    write_warc(path, pages(4), corrupt_after=1, corruption=short_record)

    reader = WarcResponseReader(path)
    urls = [r.url for r in reader]

    assert urls == [f"https://example.org/{n}.html" for n in range(4)]
    assert len(reader.errors) == 1 and "cut short" in reader.errors[0].message
    assert path.read_bytes()[reader.errors[0].offset :].startswith(short_record[:16])


def test_a_warc_gz_compressed_as_one_gzip_stream_is_read_and_a_cut_last_record_reported(tmp_path):
    source = tmp_path / "members.warc.gz"
    noise = random.Random(0).randbytes(20_000)  # incompressible: the cut lands in this payload
    write_warc(source, [*pages(3), ("https://example.org/noise", noise, {})])
    path = tmp_path / "stream.warc.gz"
    path.write_bytes(gzip.compress(gzip.decompress(source.read_bytes()), mtime=0))

    whole = WarcResponseReader(path)
    assert [r.body for r in whole][-1] == noise and whole.errors == []

    path.write_bytes(path.read_bytes()[:-5_000])
    cut = WarcResponseReader(path)
    assert [r.url for r in cut] == [f"https://example.org/{n}.html" for n in range(3)]
    assert len(cut.errors) == 1 and "cut short" in cut.errors[0].message


def plain_copy(gzip_path, plain_path):
    plain_path.write_bytes(gzip.decompress(gzip_path.read_bytes()))
    return plain_path


@pytest.mark.parametrize("name", ["crawl.warc", "misnamed.warc.gz"])
def test_a_plain_warc_is_read_like_the_gzip_one(tmp_path, name):
    write_warc(tmp_path / "crawl.warc.gz", pages(3))
    path = plain_copy(tmp_path / "crawl.warc.gz", tmp_path / name)

    reader = WarcResponseReader(path)

    assert [r.body for r in reader] == [f"<p>page {n}</p>".encode() for n in range(3)]
    assert reader.errors == []


def test_a_plain_warc_cut_in_its_last_response_reports_it_and_keeps_the_others(tmp_path):
    long_page = ("https://example.org/long", b"x" * 3000, {})
    write_warc(tmp_path / "crawl.warc.gz", [*pages(2), long_page])
    path = plain_copy(tmp_path / "crawl.warc.gz", tmp_path / "crawl.warc")
    last_offset = list(WarcResponseReader(path))[-1].offset
    path.write_bytes(path.read_bytes()[: last_offset + 2000])

    reader = WarcResponseReader(path)
    urls = [r.url for r in reader]

    assert urls == ["https://example.org/0.html", "https://example.org/1.html"]
    assert [e.offset for e in reader.errors] == [last_offset]


def test_an_empty_file_is_reported_as_empty(tmp_path):
    path = tmp_path / "empty.warc.gz"
    path.write_bytes(b"")

    reader = WarcResponseReader(path)

    assert list(reader) == []
    assert [(e.offset, e.warc_file) for e in reader.errors] == [(0, "empty.warc.gz")]
    assert reader.errors[0].message.startswith("empty.warc.gz is empty")


@pytest.mark.parametrize("name", ["page.warc.gz", "page.warc"])
def test_a_file_that_is_neither_gzip_nor_warc_is_reported_as_not_a_warc_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")

    reader = WarcResponseReader(path)

    assert list(reader) == []
    assert len(reader.errors) == 1
    message = reader.errors[0].message
    assert message.startswith(f"{name} is not a WARC file") and "gzip header" in message


def test_payload_over_the_cap_is_cut_and_flagged_oversized(tmp_path):
    path = tmp_path / "big.warc.gz"
    write_warc(path, [("https://example.org/big", b"<p>" + b"a" * 5000 + b"</p>", {}),
                      ("https://example.org/small", b"<p>a</p>", {})])  # fmt: skip

    big, small = WarcResponseReader(path, max_payload_bytes=1000)

    assert big.oversized and len(big.body) == 1000
    assert not small.oversized and small.body == b"<p>a</p>"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.warc.gz"):
        WarcResponseReader(tmp_path / "nothere.warc.gz")


def test_content_type_parsing_lowercases_and_strips_quotes():
    assert parse_content_type('Text/HTML; Charset="KOI8-R"') == ("text/html", "koi8-r")
    assert parse_content_type("image/png") == ("image/png", None)
    assert parse_content_type(None) == (None, None)
