"""Reading WARC response records, including from damaged files."""

from __future__ import annotations

import gzip
import zlib
from datetime import datetime, timezone

import pytest
from lmforge.tasks.warc import WarcResponseReader, parse_content_type
from lmforge.tasks.warc_writer import WarcWriter

DATE = datetime(2025, 3, 14, tzinfo=timezone.utc)


def write_warc(path, fetches, *, corrupt_after: int | None = None, corruption: bytes = b""):
    """Write `fetches` (url, body, kwargs); plant `corruption` after fetch `corrupt_after`."""
    ids = []
    with WarcWriter(path, date=DATE) as writer:
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
