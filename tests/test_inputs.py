"""Inputs beyond local files: URLs and Common Crawl listings, read from a real HTTP server on
127.0.0.1, with retries that survive a dropped connection, errors that say whether retrying can
help, and names that never lead outside the staging directory."""

from __future__ import annotations

import functools
import gzip
import hashlib
import pickle
import threading
import urllib.error
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
from data_stage_fixtures import ARTICLES_EN, html_page
from lmforge.tasks.data.config import DataConfig
from conftest import free_port
from lmforge.tasks.data.inputs import (
    InputError,
    InputsUnavailable,
    RetryPolicy,
    check_remote_inputs,
    crawl_listing_url,
    crawl_warc_urls,
    download_to,
    input_name,
    is_transient,
    local_input,
    path_inside,
    resolve_inputs,
    with_retries,
)
from lmforge.tasks.data.warc_processing import process_warc_file
from lmforge.tasks.data.warc_writer import WarcWriter

CRAWL = "CC-MAIN-2099-01"
NO_WAIT = RetryPolicy(attempts=3, first_delay_s=0.0)
HTML = (("Content-Type", "text/html; charset=utf-8"),)


class _Handler(SimpleHTTPRequestHandler):
    """Serves a directory; `/flaky/NAME` sends half of NAME and drops the connection on the first
    request, then serves it whole; `/down/...` answers 503; `/gone/NAME` answers HEAD but its
    GET is a 404 (a file deleted after the check); `/any/...` serves `any.warc.gz` whatever
    the rest of the path. GET paths are recorded as they are, HEADs as `HEAD path`."""

    requests: list[str]
    flaky_done: set[str]

    def do_HEAD(self) -> None:  # noqa: N802
        self.requests.append(f"HEAD {self.path}")
        if self.path.startswith("/down/"):
            self.send_error(503)
        elif self.path.startswith(("/gone/", "/any/")):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            super().do_HEAD()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        if self.path.startswith("/down/"):
            self.send_error(503)
            return
        if self.path.startswith("/gone/"):
            self.send_error(404)
            return
        if self.path.startswith("/any/"):
            data = (self.server.root / "any.warc.gz").read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if self.path.startswith("/flaky/"):
            name = self.path.removeprefix("/flaky/")
            data = (self.server.root / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if name not in self.flaky_done:
                self.flaky_done.add(name)
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data)
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """(base URL, served directory, list of request paths) of a server on a free port."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"requests": [], "flaky_done": set()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    httpd.root = root
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, handler.requests
    httpd.shutdown()
    httpd.server_close()


def write_warc(path, pages):
    with WarcWriter(path, date=datetime(2025, 3, 14, tzinfo=timezone.utc)) as warc:
        warc.write_warcinfo()
        for url, title, paragraphs in pages:
            warc.write_fetch(url, html_page(title, paragraphs).encode(), headers=HTML)
    return path


def publish_crawl(root, count):
    """`count` WARC files under crawl-data/CRAWL/segments/, and the crawl's warc.paths.gz."""
    paths = []
    for index in range(count):
        relative = f"crawl-data/{CRAWL}/segments/1/warc/CC-MAIN-{index:05d}.warc.gz"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        write_warc(root / relative, [(f"https://site{index}.example.org/backups.html", "Backups",
                                      ARTICLES_EN["backups"])])  # fmt: skip
        paths.append(relative)
    listing = root / f"crawl-data/{CRAWL}/warc.paths.gz"
    listing.write_bytes(gzip.compress(("\n".join(paths) + "\n").encode()))
    return paths


def test_crawl_listing_gives_the_first_max_files_warc_urls(server):
    base, root, _ = server
    paths = publish_crawl(root, 3)
    urls = crawl_warc_urls(CRAWL, max_files=2, base_url=base, policy=NO_WAIT)
    assert urls == [base + p for p in paths[:2]]
    assert crawl_warc_urls(CRAWL, base_url=base, policy=NO_WAIT) == [base + p for p in paths]


def test_a_malformed_crawl_id_is_a_clear_error():
    with pytest.raises(ValueError, match="CC-MAIN-YYYY-WW"):
        crawl_listing_url("2025-08")


def test_an_unknown_crawl_says_so_without_retrying(server):
    base, _, requests = server
    with pytest.raises(InputError, match="HTTP 404.*published crawl") as raised:
        crawl_warc_urls("CC-MAIN-1999-01", base_url=base, policy=NO_WAIT)
    assert raised.value.permanent and len(requests) == 1  # a 404 is permanent


def test_process_warc_file_reads_a_url_like_the_local_file(server, tmp_path):
    base, root, _ = server
    local = write_warc(root / "web-00000.warc.gz", [
        ("https://docs.example.org/printing.html", "Printing", ARTICLES_EN["printing"]),
        ("https://docs.example.org/time.html", "Time", ARTICLES_EN["time"]),
    ])  # fmt: skip
    url = base + "web-00000.warc.gz"
    remote = process_warc_file(url, DataConfig(), tmp_path / "remote")
    on_disk = process_warc_file(local, DataConfig(), tmp_path / "local")
    assert remote.warc_path == url and remote.warc_file == "web-00000.warc.gz"
    assert remote.size_bytes == local.stat().st_size
    assert remote.sha256 == hashlib.sha256(local.read_bytes()).hexdigest() == on_disk.sha256
    assert remote.input_description() == {"path": url, "bytes": remote.size_bytes,
                                          "sha256": remote.sha256}  # fmt: skip
    assert remote.stats == on_disk.stats and remote.stats["candidates"] == 2
    texts = [pq.read_table(r.candidates_path).column("text").to_pylist() for r in (remote, on_disk)]
    assert texts[0] == texts[1]
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == [
        "web-00000.candidates.parquet", "web-00000.removed.parquet",
    ]  # the spooled download is gone  # fmt: skip


def test_a_dropped_connection_is_retried_and_the_download_completes(server, tmp_path):
    base, root, requests = server
    data = bytes(range(256)) * 4096
    (root / "blob.bin").write_bytes(data)
    size, digest = download_to(base + "flaky/blob.bin", tmp_path / "blob", NO_WAIT, 1 << 14)
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "blob").read_bytes() == data
    assert requests == ["/flaky/blob.bin", "/flaky/blob.bin"]


def test_a_missing_url_fails_at_the_first_answer_and_leaves_no_spool_file(server, tmp_path):
    base, _, requests = server
    spool = tmp_path / "spool"
    with pytest.raises(InputError, match="nothere.warc.gz: HTTP 404") as raised:
        with local_input(base + "nothere.warc.gz", spool, NO_WAIT):
            pass
    assert raised.value.permanent
    assert requests == ["/nothere.warc.gz"] and list(spool.iterdir()) == []


def test_a_server_error_is_retried_then_reported_as_transient(server, tmp_path):
    base, _, requests = server
    with pytest.raises(InputError, match="HTTP 503.*[(]3 attempts[)]; still failing after retries") as raised:
        download_to(base + "down/web.warc.gz", tmp_path / "spool", NO_WAIT)
    assert not raised.value.permanent and requests == ["/down/web.warc.gz"] * 3


def test_a_refused_connection_is_retried_not_taken_for_a_missing_file(tmp_path, caplog):
    url = f"http://127.0.0.1:{free_port()}/web.warc.gz"  # nothing listens there
    with pytest.raises(InputError, match="connection refused [(]3 attempts[)]") as raised:
        download_to(url, tmp_path / "spool", NO_WAIT)
    assert not raised.value.permanent
    assert sum("retrying in" in record.getMessage() for record in caplog.records) == 2


def test_input_errors_cross_process_boundaries_as_plain_data(server, tmp_path):
    from tblib import pickling_support

    base, _, _ = server
    with pytest.raises(InputError) as raised:
        download_to(base + "nothere.warc.gz", tmp_path / "spool", NO_WAIT)
    # As under dask: exceptions pickle with their chain, where an HTTP error's socket would be.
    pickling_support.install(raised.value)
    copy = pickle.loads(pickle.dumps(raised.value))
    expected = (base + "nothere.warc.gz", "HTTP 404 File not found", True)
    assert (copy.location, copy.reason, copy.permanent) == expected
    assert str(copy) == str(raised.value) and "\n" not in str(copy)


def test_remote_inputs_are_checked_before_any_work_and_every_bad_one_is_named(server):
    base, root, requests = server
    write_warc(root / "good.warc.gz", [])
    refused = f"http://127.0.0.1:{free_port()}/refused.warc.gz"
    inputs = [base + "good.warc.gz", base + "missing.warc.gz", refused, base + "down/x.warc.gz"]
    with pytest.raises(InputsUnavailable) as raised:
        check_remote_inputs(inputs, NO_WAIT)
    message = str(raised.value)
    assert message.startswith("3 of 4 remote inputs cannot be read, so nothing was processed")
    assert f"{base}missing.warc.gz: HTTP 404" in message
    assert f"{refused}: connection refused (3 attempts)" in message
    assert f"{base}down/x.warc.gz: HTTP 503" in message and "good.warc.gz" not in message
    assert all(r.startswith("HEAD ") for r in requests)  # nothing downloaded
    assert requests.count("HEAD /missing.warc.gz") == 1  # permanent: asked once
    check_remote_inputs([base + "good.warc.gz", "/local/files/are/not/checked.warc.gz"], NO_WAIT)


def test_with_retries_backs_off_exponentially_then_gives_up():
    waits: list[float] = []
    calls = []

    def fail():
        calls.append(1)
        raise ConnectionResetError("reset by peer")

    policy = RetryPolicy(attempts=4, first_delay_s=1.0, backoff=2.0, max_delay_s=3.0)
    with pytest.raises(ConnectionResetError):
        with_retries(fail, "reading", policy, sleep=waits.append)
    assert len(calls) == 4 and waits == [1.0, 2.0, 3.0]


def test_with_retries_returns_once_a_transient_error_clears():
    outcomes = [TimeoutError("slow"), OSError("reset"), "done"]

    def flaky():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert with_retries(flaky, "reading", NO_WAIT, sleep=lambda _: None) == "done"


def test_permanent_errors_are_not_transient():
    assert not is_transient(FileNotFoundError("x")) and not is_transient(PermissionError("x"))
    assert not is_transient(ValueError("bad data"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())

    def http(code):
        return urllib.error.HTTPError("http://h/x", code, "", None, None)

    assert not any(is_transient(http(code)) for code in (403, 404, 410))
    assert all(is_transient(http(code)) for code in (408, 429, 500, 502, 503))


def test_the_default_policy_is_five_attempts_waiting_1_2_4_8_seconds():
    assert RetryPolicy().attempts == 5 and list(RetryPolicy().delays()) == [1, 2, 4, 8]


@pytest.mark.parametrize("escape", ["%2F..%2F..%2Fescape%2Fpwn.warc.gz",
                                    "..%2F..%2Fescape%2Fpwn.warc.gz"])  # fmt: skip
def test_a_url_name_cannot_lead_outside_the_staging_directory(server, tmp_path, escape):
    base, root, _ = server
    write_warc(root / "any.warc.gz", [
        ("https://docs.example.org/printing.html", "Printing", ARTICLES_EN["printing"]),
    ])  # fmt: skip
    staging = tmp_path / "out" / "staging"
    (tmp_path / "escape").mkdir()  # where `../../escape/` would land, were it followed
    result = process_warc_file(base + "any/" + escape, DataConfig(), staging)
    assert list((tmp_path / "escape").iterdir()) == []
    assert {p.parent for p in staging.iterdir()} == {staging.resolve()}
    assert result.warc_file == input_name(base + "any/" + escape)
    assert "/" not in result.warc_file and result.warc_file.endswith(".warc.gz")
    assert result.stats["candidates"] == 1


def test_crawl_listing_entries_cannot_lead_outside_the_staging_directory(server, tmp_path):
    base, root, _ = server
    write_warc(root / "any.warc.gz", [])
    listing = root / f"crawl-data/{CRAWL}/warc.paths.gz"
    listing.parent.mkdir(parents=True)
    listing.write_bytes(gzip.compress(b"any/..%2F..%2Fescape%2Fpwn.warc.gz\n"))
    (tmp_path / "escape").mkdir()
    (url,) = resolve_inputs(crawl=CRAWL, crawl_base_url=base)
    process_warc_file(url, DataConfig(), tmp_path / "out" / "staging")
    assert list((tmp_path / "escape").iterdir()) == []


def test_input_names_are_one_safe_component_and_stay_unique():
    assert input_name("https://h/crawl/CC-MAIN-00001.warc.gz") == "CC-MAIN-00001.warc.gz"
    assert input_name("/data/données.warc.gz") == "données.warc.gz"  # a safe name is kept
    for url in ("http://h/%2F..%2Fetc%2Fx.warc.gz", "http://h/..", "http://h/a%00b.warc",
                "http://h/" + "a" * 400 + ".warc.gz", "http://h/.hidden.warc.gz"):  # fmt: skip
        name = input_name(url)
        assert name and not name.startswith(".") and len(name.encode()) <= 160
        assert not set(name) & {"/", "\\", "\0"}
        assert path_inside("/tmp/staging", name).parent.name == "staging"
    assert input_name("http://h/a%2Fb.warc.gz") != input_name("http://h/a%3Fb.warc.gz")
    for bad in ("..", "", "a/b", "x\0y"):
        with pytest.raises(ValueError, match="not a file name inside"):
            path_inside("/tmp/staging", bad)


def test_resolve_inputs_mixes_local_files_urls_and_a_crawl(server, tmp_path):
    base, root, _ = server
    paths = publish_crawl(root, 2)
    local = write_warc(tmp_path / "local-00000.warc.gz", [])
    url = base + "other/web-00001.warc.gz"
    found = resolve_inputs([str(local), url], crawl=CRAWL, max_files=1, crawl_base_url=base)
    assert found == [local.resolve(), url, base + paths[0]]
    assert [input_name(item) for item in found] == [
        "local-00000.warc.gz", "web-00001.warc.gz", "CC-MAIN-00000.warc.gz",
    ]  # fmt: skip


def test_resolve_inputs_refuses_unclear_requests(tmp_path):
    with pytest.raises(ValueError, match="give crawl"):
        resolve_inputs([str(tmp_path)], max_files=2)
    with pytest.raises(ValueError, match="no input"):
        resolve_inputs([])
    with pytest.raises(ValueError, match="share the file name"):
        resolve_inputs(["https://a.example/x.warc.gz", "https://b.example/x.warc.gz"])
    with pytest.raises(ValueError, match="s3:// only"):
        resolve_inputs(["https://a.example/*.warc.gz"])


def test_cli_crawl_options_reach_the_input_resolution(server):
    from lmforge.cli import build_parser, check_inputs, stage_configs

    base, root, _ = server
    paths = publish_crawl(root, 3)
    args = build_parser().parse_args([
        "data", "refresh", "--input", base + "extra.warc.gz", "--crawl", CRAWL,
        "--max-files", "2", "--crawl-base-url", base, "--min-lang-scores", "ja=0.5",
    ])  # fmt: skip
    configs = stage_configs(args)
    run = configs["run"]
    check_inputs(run.input, run.crawl, run.max_files)
    assert run.input_files() == [base + "extra.warc.gz", *(base + p for p in paths[:2])]
    assert configs["data"].min_score_for("ja") == 0.5
    with pytest.raises(ValueError, match="CC-MAIN-YYYY-WW"):
        check_inputs([], "latest", None)
    with pytest.raises(ValueError, match="--crawl"):
        check_inputs([], None, 3)


def test_a_dataset_built_from_a_url_describes_it_in_the_manifest(server, tmp_path):
    from lmforge.tasks.data.refresh import refresh_dataset

    base, root, _ = server
    local = write_warc(root / "web-00002.warc.gz", [
        ("https://docs.example.org/printing.html", "Printing", ARTICLES_EN["printing"]),
    ])  # fmt: skip
    manifest = refresh_dataset([base + "web-00002.warc.gz"], tmp_path / "data")
    assert manifest["inputs"] == [{
        "path": base + "web-00002.warc.gz", "bytes": local.stat().st_size,
        "sha256": hashlib.sha256(local.read_bytes()).hexdigest(),
    }]  # fmt: skip
    assert manifest["counts"]["kept"] == 1
