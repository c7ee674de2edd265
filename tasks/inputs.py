"""Where WARC files come from: local paths and globs, `http(s)://` and `s3://` URLs (through
fsspec), and Common Crawl by crawl id.

A remote file is streamed in chunks to a spool file beside the staged outputs while its sha256
and size are computed, so memory stays constant whatever the file size; the spool file is
deleted after the file is processed. An interrupted download is retried with exponential
backoff and resumes where it stopped (by skipping the bytes already spooled, which works with
servers that ignore HTTP range requests). `s3://` needs the optional `s3fs` package.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from lmforge.manifest import input_sha256

log = logging.getLogger(__name__)

WARC_SUFFIXES = (".warc.gz", ".warc")
COMMON_CRAWL_BASE_URL = "https://data.commoncrawl.org/"
REMOTE_SCHEMES = ("http", "https", "s3")
_CRAWL_ID = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
_CHUNK_BYTES = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a remote read is retried: `attempts` tries in all, waiting
    `first_delay_s`, then `backoff` times longer each time, never more than `max_delay_s`."""

    attempts: int = 5
    first_delay_s: float = 1.0
    backoff: float = 2.0
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.first_delay_s < 0 or self.backoff < 1 or self.max_delay_s < 0:
            raise ValueError("delays must be >= 0 and backoff >= 1")

    def delays(self) -> Iterator[float]:
        """The waits between consecutive attempts (attempts - 1 of them)."""
        delay = self.first_delay_s
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_delay_s)
            delay *= self.backoff


def is_transient(error: BaseException) -> bool:
    """Whether retrying might help: network and server errors yes; a missing file or a refused
    permission (HTTP 404/403, S3 NoSuchKey) no."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    status = getattr(error, "status", None)  # aiohttp.ClientResponseError
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return False
    return isinstance(error, (OSError, TimeoutError, ConnectionError)) or _is_client_error(error)


def _is_client_error(error: BaseException) -> bool:
    try:
        from aiohttp import ClientError
    except ImportError:
        return False
    return isinstance(error, ClientError)


def with_retries(
    operation: Callable[[], T],
    what: str,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `operation` until it succeeds, retrying transient errors (see `is_transient`) with
    the policy's backoff. Raises the last error, or the first permanent one at once."""
    delays = policy.delays()
    attempt = 1
    while True:
        try:
            return operation()
        except Exception as error:
            delay = next(delays, None)
            if delay is None or not is_transient(error):
                raise
            log.warning("%s failed (attempt %d of %d: %s); retrying in %.1f s",
                        what, attempt, policy.attempts, error, delay)  # fmt: skip
            sleep(delay)
            attempt += 1


def is_remote(location: str | os.PathLike[str]) -> bool:
    """True for `http://`, `https://` and `s3://` locations."""
    scheme = urlsplit(os.fspath(location)).scheme.lower()
    return scheme in REMOTE_SCHEMES


def input_name(location: str | os.PathLike[str]) -> str:
    """The file name of a local path or URL (`.../CC-MAIN-x-00001.warc.gz` -> that name)."""
    text = os.fspath(location)
    if is_remote(text):
        return unquote(urlsplit(text).path.rstrip("/").rsplit("/", 1)[-1])
    return Path(text).name


def _open_remote(url: str):
    import fsspec

    scheme = urlsplit(url).scheme.lower()
    if scheme == "s3":
        try:
            import s3fs  # noqa: F401
        except ImportError as error:
            raise ImportError(
                f"reading {url} needs s3fs: pip install 'lmforge[s3]' (or pip install s3fs)"
            ) from error
        return fsspec.open(url, "rb").open()
    # block_size=0: a plain streaming GET, no HEAD or range requests a server may not support.
    return fsspec.open(url, "rb", block_size=0).open()


def read_remote_bytes(url: str, policy: RetryPolicy = RetryPolicy()) -> bytes:
    """The whole content of a small remote file (a listing), with retries."""

    def fetch() -> bytes:
        with _open_remote(url) as handle:
            return handle.read()

    return with_retries(fetch, f"reading {url}", policy)


@dataclass(frozen=True)
class SpooledInput:
    """A WARC file ready to read locally: `path` to read, `location` it came from (path or
    URL), its size in bytes and sha256."""

    path: Path
    location: str
    size: int
    sha256: str


def download_to(
    url: str,
    destination: Path,
    policy: RetryPolicy = RetryPolicy(),
    chunk_bytes: int = _CHUNK_BYTES,
) -> tuple[int, str]:
    """Stream `url` into `destination` in chunks; (bytes, sha256 hex). An interrupted transfer
    is retried and resumes after the bytes already written."""
    digest = hashlib.sha256()
    written = 0
    with open(destination, "wb") as out:

        def transfer() -> None:
            nonlocal written
            with _open_remote(url) as handle:
                _skip(handle, written)
                while chunk := handle.read(chunk_bytes):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)

        with_retries(transfer, f"downloading {url}", policy)
    return written, digest.hexdigest()


def _skip(handle: io.RawIOBase, count: int) -> None:
    """Advance a fresh stream past `count` bytes: seek if it can, otherwise read them away."""
    if count == 0:
        return
    try:
        handle.seek(count)
        return
    except (OSError, ValueError, NotImplementedError):
        pass
    remaining = count
    while remaining:
        chunk = handle.read(min(remaining, _CHUNK_BYTES))
        if not chunk:
            raise ConnectionError(f"stream ended after {count - remaining} of {count} bytes")
        remaining -= len(chunk)


@contextmanager
def local_input(
    location: str | os.PathLike[str], spool_dir: str | os.PathLike[str],
    policy: RetryPolicy = RetryPolicy(),
) -> Iterator[SpooledInput]:  # fmt: skip
    """A local file for `location`: the file itself, or a remote file spooled into `spool_dir`
    (removed on exit). Raises FileNotFoundError for a missing local file or a URL that answers
    404."""
    text = os.fspath(location)
    if not is_remote(text):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"WARC file {path} does not exist (check the input path)")
        yield SpooledInput(path, str(path.resolve()), path.stat().st_size, input_sha256(path))
        return
    spool = Path(spool_dir)
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f".{input_name(text)}.download-{os.getpid()}"
    try:
        size, digest = download_to(text, path, policy)
        yield SpooledInput(path, text, size, digest)
    finally:
        path.unlink(missing_ok=True)


def crawl_listing_url(crawl_id: str, base_url: str = COMMON_CRAWL_BASE_URL) -> str:
    """`CC-MAIN-2025-08` -> `<base>/crawl-data/CC-MAIN-2025-08/warc.paths.gz`."""
    if not _CRAWL_ID.match(crawl_id):
        raise ValueError(
            f"{crawl_id!r} is not a Common Crawl id: expected CC-MAIN-YYYY-WW, e.g. "
            "CC-MAIN-2025-08 (see https://commoncrawl.org/overview for the list of crawls)"
        )
    return f"{base_url.rstrip('/')}/crawl-data/{crawl_id}/warc.paths.gz"


def crawl_warc_urls(
    crawl_id: str,
    max_files: int | None = None,
    base_url: str = COMMON_CRAWL_BASE_URL,
    policy: RetryPolicy = RetryPolicy(),
) -> list[str]:
    """URLs of the first `max_files` WARC files (all when None) of a Common Crawl crawl, read
    from its `warc.paths.gz` listing under `base_url`."""
    if max_files is not None and max_files < 1:
        raise ValueError(f"max_files must be at least 1, got {max_files}")
    listing_url = crawl_listing_url(crawl_id, base_url)
    try:
        listing = read_remote_bytes(listing_url, policy)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{listing_url} does not exist: is {crawl_id} a published crawl?"
        ) from error
    try:
        lines = gzip.decompress(listing).decode("utf-8").splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"{listing_url} is not a gzip list of WARC paths ({error})") from error
    paths = [line.strip() for line in lines if line.strip()]
    if max_files is not None:
        paths = paths[:max_files]
    return [f"{base_url.rstrip('/')}/{path.lstrip('/')}" for path in paths]


def resolve_inputs(
    patterns: Sequence[str | os.PathLike[str]] = (),
    crawl: str | None = None,
    max_files: int | None = None,
    crawl_base_url: str = COMMON_CRAWL_BASE_URL,
) -> list[Path | str]:
    """The WARC files to process: local paths, directories (their `*.warc.gz`/`*.warc` files)
    and globs as sorted resolved Paths; `http(s)://`/`s3://` URLs (s3 globs expanded) as
    strings, in the order given; then the first `max_files` files of Common Crawl `crawl`.

    Raises FileNotFoundError naming a pattern that matches no file, ValueError when nothing is
    given, when `max_files` comes without `crawl`, or when two inputs share a file name
    (documents and staging files are named after it).
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    if max_files is not None and crawl is None:
        raise ValueError("max_files limits a Common Crawl crawl: give crawl (e.g. CC-MAIN-2025-08)")
    if not patterns and crawl is None:
        raise ValueError("no input: give WARC paths, globs or URLs, or a Common Crawl id")
    local: set[Path] = set()
    remote: list[str] = []
    for pattern in patterns:
        text = os.fspath(pattern)
        if is_remote(text):
            remote.extend(_expand_remote(text))
        else:
            local.update(_expand_local(text))
    if crawl is not None:
        remote.extend(crawl_warc_urls(crawl, max_files, crawl_base_url))
    inputs: list[Path | str] = [*sorted(local), *dict.fromkeys(remote)]
    by_name: dict[str, Path | str] = {}
    for item in inputs:
        name = input_name(item)
        if name in by_name:
            raise ValueError(
                f"two inputs share the file name {name!r}: {by_name[name]} and {item}; "
                "rename one, since documents record the WARC file by name"
            )
        by_name[name] = item
    return inputs


def _expand_local(text: str) -> list[Path]:
    path = Path(text).expanduser()
    if path.is_dir():
        matches = [p for p in path.iterdir() if p.is_file() and p.name.endswith(WARC_SUFFIXES)]
    elif glob.has_magic(text):
        matches = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
        matches = [p for p in matches if p.is_file()]
    else:
        matches = [path] if path.is_file() else []
    if not matches:
        raise FileNotFoundError(
            f"input {text!r} matches no WARC file (give a file, a directory or a glob "
            "such as 'crawl/*.warc.gz')"
        )
    return [p.resolve() for p in matches]


def _expand_remote(url: str) -> list[str]:
    if not glob.has_magic(url):
        return [url]
    if urlsplit(url).scheme.lower() != "s3":
        raise ValueError(f"{url}: globs work on local paths and s3:// only, not over HTTP")
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(url)
    if not paths:
        raise FileNotFoundError(f"input {url!r} matches no file")
    return [f"s3://{p}" for p in sorted(paths)]
