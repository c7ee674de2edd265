"""The WARC writer's output reads back with fastwarc, record by record, digests included."""

from __future__ import annotations

import re
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastwarc import ArchiveIterator, WarcRecordType

from data_stage_fixtures import CorruptingWarcWriter
from lmforge.tasks.data.warc_writer import WarcWriter, sha1_base32

DATE = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
PAGE = "<html><body><p>Grüße aus der Dokumentation.</p></body></html>".encode("utf-8")


def write_sample(path: Path, date: datetime = DATE) -> list[str]:
    with WarcWriter(path, date=date) as writer:
        writer.write_warcinfo({"software": "test", "description": "fixture"})
        return [
            writer.write_fetch("https://docs.example.org/a.html", PAGE),
            writer.write_fetch(
                "https://docs.example.org/old",
                b"",
                status=301,
                reason="Moved Permanently",
                headers=[("Location", "https://docs.example.org/a.html")],
            ),
            writer.write_fetch(
                "https://docs.example.org/missing",
                b"<h1>Not Found</h1>",
                status=404,
                reason="Not Found",
            ),
        ]


def gzip_members(data: bytes) -> list[bytes]:
    members = []
    while data:
        inflater = zlib.decompressobj(wbits=31)
        members.append(inflater.decompress(data))
        assert inflater.eof, "truncated gzip member"
        data = inflater.unused_data
    return members


def test_fastwarc_reads_back_types_urls_statuses_and_bodies(tmp_path):
    path = tmp_path / "sample.warc.gz"
    write_sample(path)
    records = list(ArchiveIterator(open(path, "rb"), parse_http=True))
    assert [r.record_type for r in records] == [WarcRecordType.warcinfo] + [
        WarcRecordType.request,
        WarcRecordType.response,
        WarcRecordType.metadata,
    ] * 3
    responses = [r for r in records if r.record_type == WarcRecordType.response]
    assert [r.headers.get("WARC-Target-URI") for r in responses] == [
        "https://docs.example.org/a.html",
        "https://docs.example.org/old",
        "https://docs.example.org/missing",
    ]
    assert [r.http_headers.status_code for r in responses] == [200, 301, 404]
    assert responses[0].http_charset == "utf-8"
    assert responses[0].http_headers.get("Content-Length") == str(len(PAGE))
    assert responses[1].http_headers.get("Location") == "https://docs.example.org/a.html"
    assert {r.headers.get("Content-Type") for r in responses} == {
        "application/http; msgtype=response"
    }


def test_response_body_is_stored_byte_for_byte(tmp_path):
    path = tmp_path / "sample.warc.gz"
    write_sample(path)
    iterator = ArchiveIterator(open(path, "rb"), record_types=WarcRecordType.response)
    assert next(iter(iterator)).reader.read() == PAGE


def test_block_and_payload_digests_verify(tmp_path):
    path = tmp_path / "sample.warc.gz"
    write_sample(path)
    # Block digests cover the whole block, so check them before the HTTP headers are parsed.
    # A record's content can only be read while the iterator stands on it.
    block_checks = [
        (bool(record.headers.get("WARC-Block-Digest")), record.verify_block_digest())
        for record in ArchiveIterator(open(path, "rb"), parse_http=False)
    ]
    assert block_checks == [(True, True)] * 10
    payload_checks = [
        (record.headers.get("WARC-Payload-Digest"), record.verify_payload_digest())
        for record in ArchiveIterator(
            open(path, "rb"), record_types=WarcRecordType.response, parse_http=True
        )
    ]
    assert [valid for _, valid in payload_checks] == [True, True, True]
    assert payload_checks[0][0] == sha1_base32(PAGE)
    assert payload_checks[1][0] == sha1_base32(b"")


def test_records_link_to_their_request_response_and_warcinfo(tmp_path):
    path = tmp_path / "sample.warc.gz"
    response_ids = write_sample(path)
    records = list(ArchiveIterator(open(path, "rb"), parse_http=False))
    warcinfo_id = records[0].record_id
    assert records[0].headers.get("WARC-Filename") == "sample.warc.gz"
    assert all(r.headers.get("WARC-Warcinfo-ID") == warcinfo_id for r in records[1:])
    for request, response, metadata in zip(records[1::3], records[2::3], records[3::3]):
        assert response.headers.get("WARC-Concurrent-To") == request.record_id
        assert metadata.headers.get("WARC-Concurrent-To") == response.record_id
    assert [r.record_id for r in records[2::3]] == response_ids


def test_record_ids_are_unique_urn_uuids(tmp_path):
    path = tmp_path / "sample.warc.gz"
    write_sample(path)
    ids = [r.record_id for r in ArchiveIterator(open(path, "rb"), parse_http=False)]
    assert len(set(ids)) == len(ids) == 10
    urn = re.compile(r"<urn:uuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}>")
    assert all(urn.fullmatch(record_id) for record_id in ids)


def test_each_record_is_its_own_gzip_member_with_crlf_headers(tmp_path):
    path = tmp_path / "sample.warc.gz"
    write_sample(path)
    members = gzip_members(path.read_bytes())
    assert len(members) == 10
    for member in members:
        assert member.startswith(b"WARC/1.0\r\n")
        assert member.endswith(b"\r\n\r\n")
        warc_head = member.split(b"\r\n\r\n", 1)[0]
        assert b"\n" not in warc_head.replace(b"\r\n", b"")
        declared = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", warc_head).group(1))
        assert len(member) == len(warc_head) + 4 + declared + 4


def test_same_inputs_give_byte_identical_files(tmp_path):
    write_sample(tmp_path / "one.warc.gz")
    (tmp_path / "again").mkdir()
    write_sample(tmp_path / "again" / "one.warc.gz")
    assert (tmp_path / "one.warc.gz").read_bytes() == (tmp_path / "again/one.warc.gz").read_bytes()
    (tmp_path / "later").mkdir()
    write_sample(tmp_path / "later" / "one.warc.gz", date=datetime(2024, 6, 1, tzinfo=timezone.utc))
    assert (tmp_path / "later/one.warc.gz").read_bytes() != (tmp_path / "one.warc.gz").read_bytes()


def test_fetch_dates_start_at_the_given_date_and_advance_a_second_per_fetch(tmp_path):
    path = tmp_path / "sample.warc.gz"
    write_sample(path, date=datetime(2024, 5, 1, 12, 0, 0))  # naive: taken as UTC
    responses = ArchiveIterator(open(path, "rb"), record_types=WarcRecordType.response)
    assert [r.headers.get("WARC-Date") for r in responses] == [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:01Z",
        "2024-05-01T12:00:02Z",
    ]


def test_write_raw_plants_bytes_verbatim_between_members(tmp_path):
    path = tmp_path / "corrupt.warc.gz"
    with CorruptingWarcWriter(path, date=DATE) as writer:
        writer.write_fetch("https://docs.example.org/a.html", PAGE)
        writer.write_raw(b"\x1f\x8b this is not a gzip member")
        writer.write_fetch("https://docs.example.org/b.html", PAGE)
    data = path.read_bytes()
    assert data.count(b"\x1f\x8b this is not a gzip member") == 1
    with pytest.raises(zlib.error):
        gzip_members(data)


def test_invalid_input_is_refused_with_a_clear_error(tmp_path):
    with WarcWriter(tmp_path / "bad.warc.gz", date=DATE) as writer:
        with pytest.raises(ValueError, match="absolute http"):
            writer.write_fetch("/relative/path.html", PAGE)
        with pytest.raises(ValueError, match="outside 100-599"):
            writer.write_fetch("https://docs.example.org/", PAGE, status=42)
        with pytest.raises(ValueError, match="line break"):
            writer.write_fetch("https://docs.example.org/", PAGE, headers=[("X-A", "1\r\nX-B: 2")])
        writer.write_warcinfo()
        with pytest.raises(ValueError, match="already written"):
            writer.write_warcinfo()
    with pytest.raises(ValueError, match="closed"):
        writer.write_fetch("https://docs.example.org/", PAGE)
