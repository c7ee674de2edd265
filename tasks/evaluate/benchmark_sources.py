"""Benchmark files from a local path or their public URL, downloaded once into a cache.

A URL may name a file inside a zip archive as `URL#member` (ARC is published as one zip). Files
published beside the main one (PIQA's labels) are fetched from the same folder of the URL.
Downloads are written under a temporary name and renamed when complete, so an interrupted
download is never mistaken for a cached file.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

DEFAULT_CACHE = Path.home() / ".cache" / "lmforge" / "benchmarks"
DOWNLOAD_TIMEOUT_S = 60


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def download(url: str, destination: Path) -> Path:
    """Fetch `url` to `destination` (kept if already there); a clear error when unreachable."""
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(
            partial, "wb"
        ) as out:
            shutil.copyfileobj(response, out)
        partial.replace(destination)
    except OSError as error:  # URLError and HTTPError are OSErrors
        raise FileNotFoundError(
            f"could not download {url} ({error}): pass a local copy of the file instead"
        ) from error
    finally:
        partial.unlink(missing_ok=True)
    return destination


def fetch_benchmark_file(
    source: str,
    cache_dir: str | Path = DEFAULT_CACHE,
    sidecars: Callable[[str], list[str]] = lambda name: [],
) -> Path:
    """A local path for `source`: a path as it is (it must exist), or a URL downloaded into
    `cache_dir` together with its `sidecars(file name)`; `URL#member` extracts `member` from the
    zip at URL. Raises FileNotFoundError for a missing path, a failed download or member."""
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file {path} does not exist")
        return path
    url, _, member = source.partition("#")
    # One folder per URL folder, so that sidecar files land beside the main file.
    folder = url.rsplit("/", 1)[0]
    cache = Path(cache_dir) / hashlib.sha256(folder.encode()).hexdigest()[:16]
    name = PurePosixPath(urlsplit(url).path).name or "download"
    downloaded = download(url, cache / name)
    for sidecar in sidecars(name):
        download(f"{folder}/{sidecar}", cache / sidecar)
    return extract_member(downloaded, member) if member else downloaded


def extract_member(archive: Path, member: str) -> Path:
    """`member` of zip `archive`, extracted beside it (once)."""
    target = archive.parent / archive.stem / member
    if target.is_file():
        return target
    try:
        with zipfile.ZipFile(archive) as zipped:
            data = zipped.read(member)
    except (zipfile.BadZipFile, KeyError) as error:
        raise FileNotFoundError(f"{archive} has no member {member!r} ({error})") from error
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    partial.write_bytes(data)
    partial.replace(target)
    return target
