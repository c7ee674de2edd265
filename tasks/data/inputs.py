"""Where WARC files come from: local paths and globs, `http(s)://` and `s3://` URLs (through
fsspec), and Common Crawl by crawl id.

A remote file is streamed in chunks to a spool file beside the staged outputs while its sha256
and size are computed, so memory stays constant whatever the file size; the spool file is
deleted after the file is processed. An interrupted download is retried with exponential
backoff and resumes where it stopped (by skipping the bytes already spooled, which works with
servers that ignore HTTP range requests). `s3://` needs the optional `s3fs` package.

HTTP goes through the standard library rather than fsspec: fsspec reports a refused connection
as FileNotFoundError, so a host that is down would look like a missing file and get no retries.
A failed remote read ends in `InputError` (strings and a bool only, so it crosses process
boundaries): permanent (HTTP 4xx such as 404, 403, 410) at the first answer, transient
(connection refused or reset, timeouts, HTTP 5xx, 408, 429) after the policy's retries.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import http.client
import io
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import unquote, urlsplit

from lmforge import __version__
from lmforge.errors import LmforgeError
from lmforge.manifest import input_sha256

log = logging.getLogger(__name__)

WARC_SUFFIXES = (".warc.gz", ".warc")
COMMON_CRAWL_BASE_URL = "https://data.commoncrawl.org/"
REMOTE_SCHEMES = ("http", "https", "s3")
_CRAWL_ID = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
_CHUNK_BYTES = 1 << 20
# A name derived from an input stays one path component this long (bytes), well under the 255
# of common filesystems once `.candidates.parquet` or a spool prefix is added.
_MAX_NAME_BYTES = 160
_NAME_PUNCTUATION = "._-+=@,~"
# HTTP answers that retrying may fix; every other 4xx (404, 403, 410, ...) is permanent.
_TRANSIENT_HTTP_4XX = (408, 425, 429)
T = TypeVar("T")


class InputError(LmforgeError):
    """A WARC input that could not be read: `location` (URL or path), `reason` in words, and
    whether it is `permanent` (a 404: retrying cannot help) or transient (network or server:
    already retried with backoff when this is raised). Only strings and a bool, so it pickles
    across process boundaries."""

    def __init__(self, location: str, reason: str, permanent: bool):
        super().__init__(location, reason, permanent)
        self.location, self.reason, self.permanent = location, reason, permanent

    def __str__(self) -> str:
        if self.permanent:
            advice = "check the URL, or leave it out of the inputs"
        else:
            advice = "still failing after retries with backoff; check the network and the "
            advice += "server, then run again"
        return f"cannot read input {self.location}: {self.reason}; {advice}"


class InputsUnavailable(LmforgeError):
    """One or more inputs of a refresh cannot be read; the message lists them and says what
    happened to the work already done."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a remote read is retried: `attempts` tries in all, waiting
    `first_delay_s`, then `backoff` times longer each time, never more than `max_delay_s`."""

    attempts: int = 5
    first_delay_s: float = 1.0
    backoff: float = 2.0
    max_delay_s: float = 30.0
    timeout_s: float = 60.0  # for connecting, and for each read of an HTTP response

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
    """Whether retrying might help: network and server errors (connection refused or reset,
    timeouts, a body cut short, HTTP 5xx/408/429) yes; a missing file or a refused permission
    (HTTP 404/403/410, S3 NoSuchKey) and anything that is not an I/O error no."""
    if isinstance(error, InputError):
        return not error.permanent
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    status = _http_status(error)
    if status is not None and 400 <= status < 500 and status not in _TRANSIENT_HTTP_4XX:
        return False
    return isinstance(error, (OSError, http.client.HTTPException)) or _is_client_error(error)


def _http_status(error: BaseException) -> int | None:
    # urllib's HTTPError has `code`; aiohttp's ClientResponseError (under s3fs) has `status`.
    for attribute in ("code", "status"):
        value = getattr(error, attribute, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _failure_reason(error: BaseException) -> str:
    """A remote read's failure in a few words: `HTTP 404 Not Found`, `connection refused`."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}".strip()
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, http.client.IncompleteRead):
        return f"connection closed after {len(error.partial)} bytes of the response"
    status = _http_status(error)
    detail = str(error) or type(error).__name__
    return f"HTTP {status}: {detail}" if status is not None else detail


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
    """The file name of a local path or URL (`.../CC-MAIN-x-00001.warc.gz` -> that name), as
    one safe path component: staged files, spool files and documents are named after it.

    Letters, digits and `._-+=@,~` are kept; anything else (a `/` or NUL that percent-decoding
    produced, spaces, control characters) becomes `_`, leading dots go, and the name is cut to
    160 bytes. A name that had to change gets 8 hex digits of the location's sha256 before its
    WARC suffix, so two inputs never collapse into one name:
    `http://h/%2F..%2Fx%2Fpwn.warc.gz` -> `_.._x_pwn-29036ccf.warc.gz`.
    """
    text = os.fspath(location)
    if is_remote(text):
        raw = unquote(urlsplit(text).path.rstrip("/").rsplit("/", 1)[-1])
    else:
        raw = Path(text).name
    name = "".join(c if c.isalnum() or c in _NAME_PUNCTUATION else "_" for c in raw).lstrip(".")
    if name == raw and name and len(name.encode()) <= _MAX_NAME_BYTES:
        return name
    suffix = next((s for s in WARC_SUFFIXES if name.endswith(s)), "")
    stem = name[: len(name) - len(suffix)] or "input"
    tag = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    room = _MAX_NAME_BYTES - len(f"-{tag}{suffix}")
    stem = stem.encode()[:room].decode("utf-8", "ignore")
    return f"{stem}-{tag}{suffix}"


def path_inside(directory: str | os.PathLike[str], name: str) -> Path:
    """`directory / name` (resolved), refusing with ValueError a `name` that is not one path
    component (empty, `.`, `..`, a separator, NUL): a guard where names derived from inputs
    become files."""
    base = Path(directory).resolve()
    if name in ("", ".", "..") or "/" in name or "\0" in name or (base / name).parent != base:
        raise ValueError(f"{name!r} is not a file name inside {base}; refusing to write it")
    return base / name


def _open_remote(url: str, policy: RetryPolicy) -> BinaryIO:
    """A streaming read of `url`: a plain GET for http(s) (no range requests, which some
    servers do not support), fsspec for s3."""
    if urlsplit(url).scheme.lower() == "s3":
        import fsspec

        try:
            import s3fs  # noqa: F401
        except ImportError as error:
            raise ImportError(
                f"reading {url} needs s3fs: pip install 'lmforge[s3]' (or pip install s3fs)"
            ) from error
        return fsspec.open(url, "rb").open()
    request = urllib.request.Request(url, headers={"User-Agent": f"lmforge/{__version__}"})
    return urllib.request.urlopen(request, timeout=policy.timeout_s)


def _remote_read(
    operation: Callable[[], T], url: str, what: str, policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> T:  # fmt: skip
    """`with_retries` for a read of `url`, its final failure turned into an InputError.

    The InputError is raised outside the `except` block, so it carries no chained exception:
    pickling that crosses processes may take the chain along (tblib, which dask installs), and
    an HTTP error holds its open socket, which does not pickle."""
    try:
        return with_retries(operation, f"{what} {url}", policy, sleep)
    except (OSError, http.client.HTTPException) as error:
        failure = _input_error(url, error, policy)
    except Exception as error:
        if not _is_client_error(error):
            raise
        failure = _input_error(url, error, policy)
    raise failure


def _input_error(url: str, error: BaseException, policy: RetryPolicy) -> InputError:
    log.debug("reading %s failed for good", url, exc_info=error)  # the chain, for --debug logs
    permanent = not is_transient(error)
    reason = _failure_reason(error)
    return InputError(url, reason if permanent else f"{reason} ({policy.attempts} attempts)",
                      permanent)  # fmt: skip


def read_remote_bytes(url: str, policy: RetryPolicy = RetryPolicy()) -> bytes:
    """The whole content of a small remote file (a listing), with retries. Raises InputError."""

    def fetch() -> bytes:
        with _open_remote(url, policy) as handle:
            return handle.read()

    return _remote_read(fetch, url, "reading", policy)


def check_remote_inputs(
    locations: Iterable[str | os.PathLike[str]], policy: RetryPolicy = RetryPolicy()
) -> None:
    """Before any work: ask for every remote input (HEAD for http(s), a stat for s3), retrying
    transient errors with `policy`. Raises InputsUnavailable listing each input that does not
    answer, so a refresh fails before processing anything rather than part-way through.
    Local inputs are skipped (`resolve_inputs` checked them)."""
    remote = [os.fspath(item) for item in locations if is_remote(item)]
    if not remote:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(remote))) as pool:
        outcomes = list(pool.map(lambda url: _check_remote(url, policy), remote))
    errors = [error for error in outcomes if error is not None]
    if errors:
        listed = "; ".join(f"{error.location}: {error.reason}" for error in errors)
        raise InputsUnavailable(
            f"{len(errors)} of {len(remote)} remote inputs cannot be read, so nothing was "
            f"processed: {listed}. Fix or leave out those inputs and run again"
        )


def _check_remote(url: str, policy: RetryPolicy) -> InputError | None:
    def ask() -> None:
        if urlsplit(url).scheme.lower() == "s3":
            import fsspec

            fsspec.filesystem("s3").info(url)
            return
        request = urllib.request.Request(
            url, method="HEAD", headers={"User-Agent": f"lmforge/{__version__}"}
        )
        try:
            urllib.request.urlopen(request, timeout=policy.timeout_s).close()
        except urllib.error.HTTPError as error:
            if error.code not in (405, 501):  # a server without HEAD: the GET will tell
                raise

    try:
        _remote_read(ask, url, "checking", policy)
    except InputError as error:
        return error
    return None


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
    is retried and resumes after the bytes already written. Raises InputError."""
    digest = hashlib.sha256()
    written = 0
    with open(destination, "wb") as out:

        def transfer() -> None:
            nonlocal written
            with _open_remote(url, policy) as handle:
                announced = _content_length(handle)
                _skip(handle, written)
                while chunk := handle.read(chunk_bytes):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
            # http.client ends a body cut short quietly, as if it were complete.
            if announced is not None and written < announced:
                raise ConnectionError(f"the response ended after {written} of {announced} bytes")

        _remote_read(transfer, url, "downloading", policy)
    return written, digest.hexdigest()


def _content_length(handle: BinaryIO) -> int | None:
    """The size an HTTP response announced (Content-Length), or None."""
    value = getattr(handle, "headers", {}).get("Content-Length", "")
    return int(value) if value.isdigit() else None


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
    (removed on exit). Raises FileNotFoundError for a missing local file, InputError for a URL
    that cannot be read (see `download_to`)."""
    text = os.fspath(location)
    if not is_remote(text):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"WARC file {path} does not exist (check the input path)")
        yield SpooledInput(path, str(path.resolve()), path.stat().st_size, input_sha256(path))
        return
    spool = Path(spool_dir)
    spool.mkdir(parents=True, exist_ok=True)
    path = path_inside(spool, f".{input_name(text)}.download-{os.getpid()}")
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
    except InputError as error:
        if not error.permanent:
            raise
        raise InputError(
            listing_url, f"{error.reason} (is {crawl_id} a published crawl?)", permanent=True
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
