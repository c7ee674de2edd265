"""Drop pages by their URL, before any extraction work: blocked domains, blocked URLs, and banned
words in the URL.

Words are checked three ways, because spam URLs run words together: a *banned word* drops a URL
when it is one of the URL's words (split at every non-alphanumeric character); two or more
different *soft words* drop it ("sex" alone may be sex-education); a *banned subword* drops it
wherever it occurs in the host and path with separators removed (`free-porn_videos` and
`freepornvideos` both hold "porn"). Small default lists ship in `lmforge/tasks/data/resources/`;
the user's files are added to them (`use_default_lists=False` replaces them).

List files hold one entry per line; blank lines and lines starting with `#` are ignored.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as config_dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lmforge.tasks.data.steps.base import Document, Step

_DEFAULT_FILES = {
    "domains": "url_blocked_domains.txt",
    "words": "url_banned_words.txt",
    "soft_words": "url_soft_banned_words.txt",
    "subwords": "url_banned_subwords.txt",
}
_NON_ALNUM = re.compile(r"[\W_]+")


def read_list(path: str | Path) -> frozenset[str]:
    """Lower-cased entries of a list file. Raises FileNotFoundError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"URL filter list {path} does not exist (check the path)")
    lines = (line.split("#", 1)[0].strip().lower() for line in path.read_text("utf-8").split("\n"))
    return frozenset(line for line in lines if line)


def default_list(kind: str) -> frozenset[str]:
    """One of the lists shipped with lmforge: `domains`, `words`, `soft_words`, `subwords`."""
    resource = importlib.resources.files("lmforge.tasks.data") / "resources" / _DEFAULT_FILES[kind]
    return read_list(Path(str(resource)))


def normalise_url(url: str) -> str:
    """`HTTPS://www.Example.com/a/b/?x=1` -> `example.com/a/b?x=1`: what URL blocklists match."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower().removeprefix("www.")
    path = parts.path.rstrip("/")
    return f"{host}{path}" + (f"?{parts.query}" if parts.query else "")


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class URLFilter(Step):
    """`reject_reason(url)`: None to keep the page, or `blocked_domain`, `blocked_url`,
    `banned_word`, `soft_banned_words` or `banned_subword`.

    The `*_files` fields name the user's list files (one entry per line); a domain entry blocks
    its subdomains too; URL entries are compared after `normalise_url`.
    """

    name = "url"

    blocked_domain_files: tuple[str, ...] = Field(
        (), description="Files of domains to drop (one per line; subdomains too)."
    )
    blocked_url_files: tuple[str, ...] = Field((), description="Files of URLs to drop (one per line).")
    banned_word_files: tuple[str, ...] = Field(
        (), description="Files of words that drop a URL containing one of them as a word."
    )
    soft_banned_word_files: tuple[str, ...] = Field(
        (), description="Files of words that drop a URL containing min_soft_banned_words of them."
    )
    banned_subword_files: tuple[str, ...] = Field(
        (), description="Files of strings that drop a URL containing one anywhere."
    )
    use_default_lists: bool = Field(
        True, description="Use the lists shipped with lmforge besides your own."
    )
    min_soft_banned_words: int = Field(
        2, ge=1, description="Soft-banned words a URL needs to be dropped."
    )

    def __post_init__(self) -> None:
        self._lists()  # a missing list file fails when the config is made, not mid-run

    def apply(self, doc: Document) -> str | None:
        return self.reject_reason(doc.response.url)

    def reject_reason(self, url: str) -> str | None:
        lists = self._lists()
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower().rstrip(".")
        labels = host.split(".")
        if any(".".join(labels[i:]) in lists.domains for i in range(len(labels))):
            return "blocked_domain"
        if lists.urls and normalise_url(url) in lists.urls:
            return "blocked_url"
        located = f"{host} {parts.path} {parts.query}".lower()
        words = set(_NON_ALNUM.split(located))
        if words & lists.words:
            return "banned_word"
        if len(words & lists.soft_words) >= self.min_soft_banned_words:
            return "soft_banned_words"
        if lists.subwords is not None and lists.subwords.search(_NON_ALNUM.sub("", located)):
            return "banned_subword"
        return None

    def _lists(self) -> _Lists:
        return _load_lists(
            self.blocked_domain_files, self.blocked_url_files, self.banned_word_files,
            self.soft_banned_word_files, self.banned_subword_files, self.use_default_lists,
        )  # fmt: skip


@dataclass(frozen=True)
class _Lists:
    domains: frozenset[str]
    urls: frozenset[str]
    words: frozenset[str]
    soft_words: frozenset[str]
    subwords: re.Pattern[str] | None


@functools.lru_cache(maxsize=16)
def _load_lists(
    domain_files: tuple[str, ...],
    url_files: tuple[str, ...],
    word_files: tuple[str, ...],
    soft_word_files: tuple[str, ...],
    subword_files: tuple[str, ...],
    use_defaults: bool,
) -> _Lists:
    # Cached per process: every file of a run shares one parsed copy of the lists.
    def merged(kind: str | None, files: tuple[str, ...]) -> frozenset[str]:
        entries = set(default_list(kind)) if use_defaults and kind else set()
        for path in files:
            entries |= read_list(path)
        return frozenset(entries)

    subwords = merged("subwords", subword_files)
    pattern = "|".join(re.escape(s) for s in sorted(subwords, key=len, reverse=True))
    return _Lists(
        domains=frozenset(
            d.removeprefix("www.").rstrip(".") for d in merged("domains", domain_files)
        ),
        urls=frozenset(normalise_url(u if "://" in u else f"http://{u}")
                       for u in merged(None, url_files)),  # fmt: skip
        words=merged("words", word_files),
        soft_words=merged("soft_words", soft_word_files),
        subwords=re.compile(pattern) if pattern else None,
    )
