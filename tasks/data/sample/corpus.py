"""The built-in sample corpus: gzip WARC files that `lmforge run` processes when given no input.

No third-party text ships in the repository, so the sample is built at run time from prose that
every Python installation carries: the language-reference topics in `pydoc_data.topics` and the
docstrings of the standard library's source files (parsed with `ast`, never imported: importing
`antigravity` opens a browser). Each becomes an HTML page on a made-up documentation site,
`https://docs.example.org/3/...`, with a header, sidebar navigation and footer around the text;
a large module also gets a page per large class, as real documentation sites do.

A crawl holds more than clean documentation, so every stage of the pipeline gets work to do
(shares are of the documentation pages, see `NoiseMix`):

- exact duplicates: a page fetched again at `?utm_source=feed`, byte for byte (dedup);
- near duplicates: the page on a mirror host with other chrome, one paragraph dropped and a few
  words changed (MinHash dedup);
- junk pages on spam hosts: keyword stuffing, one line repeated, navigation only, too short,
  symbol soup, bullet-list spam (quality filters);
- 404 pages, 301 redirects, `robots.txt` (text/plain) and PNG images (dropped while reading);
- legacy charsets: some pages are served only by an old mirror, in windows-1252 declared in the
  HTTP header, and one in ISO-8859-1 declared only in `<meta>` (extraction must decode them).

All fetches are shuffled and dealt across the files, so a duplicate usually sits in another file
than its original. The output is a pure function of the arguments and the running interpreter
(its documentation is the text): the same call on the same Python gives byte-identical files.
"""

from __future__ import annotations

import ast
import copy
import html
import itertools
import os
import platform
import random
import re
import shutil
import struct
import sys
import sysconfig
import tempfile
import textwrap
import warnings
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lmforge.tasks.data.warc_writer import WarcWriter

DOCS_HOST = "docs.example.org"
MIRROR_HOST = "pydocs-mirror.example.net"
LEGACY_HOST = "www.pyref-archiv.example.de"
SPAM_HOSTS = ("best-python-deals.example.com", "free-coding-tips.example.net")
CRAWL_DATE = datetime(2024, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
FILE_NAME = "sample-{index:05d}.warc.gz"
FILE_NAME_PATTERN = re.compile(r"sample-(\d{5})\.warc\.gz")

UTF8_HTML = (("Content-Type", "text/html; charset=utf-8"),)
# Packages whose text is not documentation prose, or that the brief keeps out of the sample.
SKIPPED_PACKAGES = frozenset({"antigravity", "this", "idlelib", "lib2to3", "test", "turtledemo"})
SKIPPED_PATH_PARTS = frozenset({"test", "tests", "idle_test"})
MIN_MODULE_TEXT = 800  # characters of docstring text a module needs to get a page
SPLIT_MODULE_TEXT = 8000  # above this, each large class of the module gets its own page
MIN_CLASS_PAGE_TEXT = 1500


@dataclass(frozen=True)
class NoiseMix:
    """What a crawl adds to the documentation, as shares of the documentation pages.

    Each kind is present at least once (junk: once per kind) however small the corpus is.
    """

    exact_duplicates: float = 0.05
    near_duplicates: float = 0.05
    junk_pages: float = 0.08
    not_found: float = 0.03
    redirects: float = 0.03
    images: float = 0.02
    legacy_charset: float = 0.03  # documentation pages moved to the legacy mirror, not extra

    def count(self, share: float, pages: int, minimum: int = 1) -> int:
        return max(minimum, round(share * pages))


MIX = NoiseMix()


@dataclass(frozen=True)
class Block:
    """One piece of a page: `h2`, `h3`, `p`, `pre`, `ul` (items separated by newlines),
    `api` (a function or class signature) or `method` (a method signature)."""

    kind: str
    text: str


@dataclass(frozen=True)
class DocPage:
    """A documentation page before rendering: its path on the site, title and content."""

    path: str
    title: str
    blocks: tuple[Block, ...]

    def count_blocks(self, kind: str) -> int:
        return sum(block.kind == kind for block in self.blocks)


def prose_chars(blocks: list[Block] | tuple[Block, ...]) -> int:
    """Characters of documentation text, signatures not counted."""
    return sum(len(block.text) for block in blocks if block.kind not in ("api", "method"))


@dataclass(frozen=True)
class Fetch:
    """One HTTP exchange to store: what `WarcWriter.write_fetch` takes."""

    url: str
    body: bytes
    status: int = 200
    reason: str = "OK"
    headers: tuple[tuple[str, str], ...] = UTF8_HTML


def build_sample_corpus(
    out_dir: str | os.PathLike[str],
    *,
    n_files: int = 2,
    max_pages: int | None = None,
    seed: int = 0,
) -> list[Path]:
    """Writes the sample crawl to `out_dir/sample-00000.warc.gz`, ... and returns their paths.

    `max_pages` caps the number of documentation pages (the noise scales with it; None takes
    every topic and module with enough text: about 480 responses on Python 3.11); `seed` picks
    the pages that are duplicated, mirrored or junk and the order of fetches. Files are written
    under a temporary directory in `out_dir` and renamed into place, and `sample-NNNNN.warc.gz`
    files left by an earlier build with more files are removed, so the directory never mixes
    two builds. Raises ValueError for n_files < 1 or max_pages < 1, and RuntimeError if this
    Python installation carries neither `pydoc_data` nor standard-library sources.
    """
    if n_files < 1:
        raise ValueError(f"n_files must be at least 1, got {n_files}")
    if max_pages is not None and max_pages < 1:
        raise ValueError(f"max_pages must be at least 1 (or None for all pages), got {max_pages}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fetches = plan_crawl(max_pages=max_pages, seed=seed)
    warcinfo = {
        "software": "lmforge sample corpus",
        "format": "WARC File Format 1.0",
        "description": "Python's own documentation rendered as web pages, with crawl noise",
        "source": f"Python {platform.python_version()}: pydoc_data.topics and stdlib docstrings",
        "seed": str(seed),
    }

    staging = Path(tempfile.mkdtemp(prefix=".sample-corpus-", dir=out_dir))
    try:
        names = []
        for index, chunk in enumerate(deal(fetches, n_files)):
            name = FILE_NAME.format(index=index)
            with WarcWriter(staging / name, date=CRAWL_DATE + timedelta(hours=index)) as writer:
                writer.write_warcinfo(warcinfo)
                for fetch in chunk:
                    writer.write_fetch(
                        fetch.url,
                        fetch.body,
                        status=fetch.status,
                        reason=fetch.reason,
                        headers=fetch.headers,
                    )
            names.append(name)
        for name in names:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in out_dir.iterdir():
        match = FILE_NAME_PATTERN.fullmatch(stale.name)
        if match and int(match.group(1)) >= n_files:
            stale.unlink()
    return [out_dir / name for name in names]


def deal(fetches: list[Fetch], n_files: int) -> list[list[Fetch]]:
    """Splits fetches into `n_files` consecutive runs whose sizes differ by at most one."""
    size, extra = divmod(len(fetches), n_files)
    chunks, start = [], 0
    for index in range(n_files):
        end = start + size + (index < extra)
        chunks.append(fetches[start:end])
        start = end
    return chunks


# --- The crawl: documentation pages plus what a crawler also brings home ---------------------


def plan_crawl(*, max_pages: int | None = None, seed: int = 0) -> list[Fetch]:
    """Every fetch of the sample crawl, in crawl order (see the module docstring for the mix)."""
    rng = random.Random(seed)
    pages = collect_doc_pages(max_pages, rng)
    n = len(pages)

    def pick(pool: list[DocPage], share: float, minimum: int = 1) -> list[DocPage]:
        return rng.sample(pool, min(len(pool), MIX.count(share, n, minimum)))

    # Legacy-mirror pages are real documentation that only the old mirror serves; pages with
    # typographic quotes make the charset matter (windows-1252 has them, Latin-1 does not).
    typographic = [page for page in pages if any(ch in page_text(page) for ch in "“”’–")]
    legacy = pick(typographic or pages, MIX.legacy_charset, minimum=2)
    on_main_site = [page for page in pages if page not in legacy] or pages
    # A near duplicate must stay similar after losing a paragraph: take pages with many.
    mirrorable = [page for page in on_main_site if page.count_blocks("p") >= 6] or [
        max(on_main_site, key=lambda page: page.count_blocks("p"))
    ]

    rendered = render_docs_pages(pages)
    fetches = [Fetch(docs_url(page), rendered[page.path]) for page in on_main_site]

    for page in pick(on_main_site, MIX.exact_duplicates):
        fetches.append(Fetch(docs_url(page) + "?utm_source=feed", rendered[page.path]))

    for page in pick(mirrorable, MIX.near_duplicates):
        variant = near_duplicate(page, rng)
        fetches.append(
            Fetch(
                f"https://{MIRROR_HOST}/python3{page.path.removeprefix('/3')}",
                render_mirror_page(variant).encode("utf-8"),
                headers=(("Content-Type", "text/html; charset=UTF-8"), ("Server", "nginx")),
            )
        )

    for index, page in enumerate(legacy):
        fetches.append(legacy_fetch(page, declared_in_meta_only=index == 0))

    junk_kinds = list(JUNK_PAGES)
    for index in range(MIX.count(MIX.junk_pages, n, len(junk_kinds))):
        kind = junk_kinds[index % len(junk_kinds)]
        host = SPAM_HOSTS[index % len(SPAM_HOSTS)]
        fetches.append(Fetch(f"https://{host}/{kind}-{index}.html", JUNK_PAGES[kind](rng)))

    for page in pick(pages, MIX.not_found):
        fetches.append(
            Fetch(
                f"https://{DOCS_HOST}/2.6{page.path.removeprefix('/3')}",
                render_not_found_page(),
                status=404,
                reason="Not Found",
            )
        )

    for page in pick(on_main_site, MIX.redirects):
        target = docs_url(page)
        fetches.append(
            Fetch(
                f"https://{DOCS_HOST}/3.11{page.path.removeprefix('/3')}",
                render_redirect_body(target),
                status=301,
                reason="Moved Permanently",
                headers=(*UTF8_HTML, ("Location", target)),
            )
        )

    for index in range(MIX.count(MIX.images, n)):
        fetches.append(
            Fetch(
                f"https://{DOCS_HOST}/_static/figure-{index}.png",
                png_image(48, 32, rng),
                headers=(("Content-Type", "image/png"),),
            )
        )

    for host in (DOCS_HOST, MIRROR_HOST, LEGACY_HOST, *SPAM_HOSTS):
        scheme = "http" if host == LEGACY_HOST else "https"
        fetches.append(
            Fetch(
                f"{scheme}://{host}/robots.txt",
                robots_txt(f"{scheme}://{host}"),
                headers=(("Content-Type", "text/plain; charset=utf-8"),),
            )
        )

    rng.shuffle(fetches)
    return fetches


def docs_url(page: DocPage) -> str:
    return f"https://{DOCS_HOST}{page.path}"


def page_text(page: DocPage) -> str:
    return "\n".join(block.text for block in page.blocks)


# Words a mirror's editor might change; all common in the documentation.
WORD_CHANGES = {
    "returns": "gives back",
    "function": "routine",
    "object": "instance",
    "argument": "parameter",
    "value": "result",
    "string": "text",
    "default": "fallback",
    "specified": "given",
    "example": "sample",
    "number": "count",
    "following": "next",
    "must": "should",
    "create": "make",
    "contains": "holds",
    "called": "invoked",
    "used": "employed",
}


def near_duplicate(page: DocPage, rng: random.Random, changed_words: int = 3) -> DocPage:
    """The page with one paragraph removed and up to `changed_words` words replaced."""
    paragraphs = [i for i, block in enumerate(page.blocks) if block.kind == "p"]
    dropped = rng.choice(paragraphs[1:] or paragraphs) if paragraphs else -1
    blocks = [block for i, block in enumerate(page.blocks) if i != dropped]
    spots = [
        (i, match.start(), match.end())
        for i, block in enumerate(blocks)
        if block.kind == "p"
        for match in re.finditer(r"\b(" + "|".join(WORD_CHANGES) + r")\b", block.text)
    ]
    # Replace from the end of each text so earlier offsets stay valid.
    for i, start, end in sorted(rng.sample(spots, min(changed_words, len(spots))), reverse=True):
        text = blocks[i].text
        blocks[i] = Block("p", text[:start] + WORD_CHANGES[text[start:end]] + text[end:])
    return DocPage(page.path, page.title, tuple(blocks))


def legacy_fetch(page: DocPage, *, declared_in_meta_only: bool) -> Fetch:
    """The page as an old mirror serves it: windows-1252 declared in the HTTP header, or
    ISO-8859-1 declared only in `<meta>`; characters the charset lacks become `&#NNNN;`."""
    charset = "iso-8859-1" if declared_in_meta_only else "windows-1252"
    body = render_legacy_page(page, charset).encode(charset, errors="xmlcharrefreplace")
    content_type = "text/html" if declared_in_meta_only else f"text/html; charset={charset}"
    return Fetch(
        f"http://{LEGACY_HOST}/doku{page.path.removeprefix('/3')}",
        body,
        headers=(("Content-Type", content_type), ("Server", "Apache/1.3.41 (Unix)")),
    )


# --- Sources: reference topics and standard-library docstrings --------------------------------


def collect_doc_pages(max_pages: int | None, rng: random.Random) -> list[DocPage]:
    """Documentation pages sorted by path: all of them, or `max_pages` picked with `rng`
    (half reference topics, half library modules, parsing only the modules it needs)."""
    topics = reference_topic_pages()
    sources = stdlib_source_files()
    if max_pages is None:
        pages = topics + [page for name, path in sources for page in module_pages(name, path)]
    else:
        rng.shuffle(sources)
        chosen_topics = rng.sample(topics, min(len(topics), (max_pages + 1) // 2))
        modules = (page for name, path in sources for page in module_pages(name, path))
        chosen_modules = list(itertools.islice(modules, max_pages - len(chosen_topics)))
        spare_topics = [topic for topic in topics if topic not in chosen_topics]
        pages = chosen_topics + chosen_modules
        pages += spare_topics[: max_pages - len(pages)]
    if not pages:
        raise RuntimeError(
            "cannot build the sample corpus: this Python has neither pydoc_data.topics nor "
            f"standard-library sources under {sysconfig.get_paths()['stdlib']}; "
            "pass WARC files to lmforge instead"
        )
    return sorted(pages, key=lambda page: page.path)


def reference_topic_pages() -> list[DocPage]:
    """One page per `pydoc_data.topics` entry (the language reference as plain text)."""
    try:
        from pydoc_data.topics import topics  # a plain dict literal: importing runs nothing else
    except ImportError:
        return []
    pages = []
    for key in sorted(topics):
        blocks = text_blocks(topics[key])
        title = key
        if blocks and blocks[0].kind == "h1":
            title, blocks = blocks[0].text, blocks[1:]
        if blocks:
            pages.append(DocPage(f"/3/reference/{key}.html", title, tuple(blocks)))
    return pages


def stdlib_source_files() -> list[tuple[str, Path]]:
    """(dotted module name, source path) of public standard-library modules, sorted by name.

    Found by walking the stdlib directory, never by importing: no module code runs.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIPPED_PACKAGES:
            continue
        if (root / f"{name}.py").is_file():
            found.append((name, root / f"{name}.py"))
        elif (root / name / "__init__.py").is_file():
            for path in sorted((root / name).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                if any(part.startswith("_") or part in SKIPPED_PATH_PARTS for part in parts):
                    continue
                found.append((".".join(parts), path))
    return found


def module_pages(name: str, path: Path) -> list[DocPage]:
    """A page for the module's docstrings (none if it has under MIN_MODULE_TEXT characters);
    a module over SPLIT_MODULE_TEXT also gets a page per class with MIN_CLASS_PAGE_TEXT."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # e.g. an odd escape in a string
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []  # a source this Python cannot parse is simply not part of the sample
    module_doc = ast.get_docstring(tree) or ""
    summary = first_sentence(module_doc)
    title = f"{name} — {summary}" if 4 <= len(summary) <= 80 else name
    intro = text_blocks(module_doc)
    sections: list[tuple[str, list[Block]]] = []  # (class name or "", blocks)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = public_docstring(node)
            if doc:
                api = Block("api", f"{name}.{node.name}({signature(node)})")
                sections.append(("", [api, *text_blocks(doc)]))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            blocks = class_blocks(name, node)
            if blocks:
                sections.append((node.name, blocks))
    total = prose_chars(intro) + sum(prose_chars(blocks) for _, blocks in sections)
    if total < MIN_MODULE_TEXT:
        return []
    pages, main_blocks = [], list(intro)
    for class_name, blocks in sections:
        if total > SPLIT_MODULE_TEXT and class_name and prose_chars(blocks) >= MIN_CLASS_PAGE_TEXT:
            class_path = f"/3/library/{name}.{class_name}.html"
            pages.append(DocPage(class_path, f"{name}.{class_name}", tuple(blocks)))
        else:
            main_blocks += blocks
    if prose_chars(main_blocks):  # every class moved to its own page and no module docstring
        pages.insert(0, DocPage(f"/3/library/{name}.html", title, tuple(main_blocks)))
    return pages


def first_sentence(text: str) -> str:
    """The first sentence of the first paragraph, without its full stop."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph)[0].rstrip(".")


def class_blocks(module: str, node: ast.ClassDef) -> list[Block]:
    """The class signature and docstring, then each documented public method's."""
    bases = ", ".join(ast.unparse(base) for base in node.bases)
    blocks = [Block("api", f"class {module}.{node.name}" + (f"({bases})" if bases else ""))]
    blocks += text_blocks(public_docstring(node) or "")
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = public_docstring(item)
            if doc:
                blocks.append(Block("method", f"{node.name}.{item.name}({signature(item)})"))
                blocks += text_blocks(doc)
    return blocks if len(blocks) > 1 else []


def public_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str | None:
    """The docstring of a public name (dunders such as `__enter__` are public protocol)."""
    is_dunder = node.name.startswith("__") and node.name.endswith("__")
    if node.name.startswith("_") and not is_dunder:
        return None
    return ast.get_docstring(node)


def signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The parameter list as written in the source, without a method's `self`/`cls`."""
    arguments = copy.copy(node.args)
    if arguments.posonlyargs and arguments.posonlyargs[0].arg in ("self", "cls"):
        arguments.posonlyargs = arguments.posonlyargs[1:]
    elif arguments.args and arguments.args[0].arg in ("self", "cls"):
        arguments.args = arguments.args[1:]
    return ast.unparse(arguments)


# --- Plain text (reST-like) to blocks ---------------------------------------------------------

UNDERLINE = re.compile(r"([*=\-~^])\1{2,}")
HEADING_FOR_UNDERLINE = {"*": "h1", "=": "h2", "-": "h3", "~": "h3", "^": "h3"}
BULLET = re.compile(r"\s*[*\-•+] ")
SIGNATURE = re.compile(r"(class\s+)?[A-Za-z_][\w.]*\(.*\)(\s*->\s*\S.*)?")
CODE_LINE = re.compile(
    r"::=|>>>|[{(\[]\s*$|^\s*[})\]]|==|\s=\s|^\s*[#@]"
    r"|^\s*(def|class)\s+\w+.*[:(]|^\s*(import|from)\s+[\w.]+"
    r"|^\s*(return|raise|yield|pass)\b|^\s*(if|for|while|with|try|else|elif|except)\b.*:\s*$"
)
# Lines that are code even at the left margin (docstrings often show code unindented):
# an assignment, a call alone on its line, a comment or a comment aligned after code.
CODE_STATEMENT = re.compile(
    r"^\s*[\w.\[\]]+(\s*,\s*[\w.\[\]]+)*\s*[-+*/]?=\s|^\s*[\w.]+\(.*\)\s*(#.*)?$"
    r"|^\s*#|\S\s{2,}#\s|^\s*>>>"
)
TABLE_BORDER = re.compile(r"\s*\+[-=+]{3,}\+\s*")


def text_blocks(text: str) -> list[Block]:
    """Splits documentation text (pydoc topics, docstrings) into headings, paragraphs, bullet
    lists and code blocks: a block is a run of lines between blank lines; indented runs that
    read like code, and doctests, become code; a line underlined with =, -, * is a heading."""
    blocks: list[Block] = []
    paragraph: list[str] = []
    for line in [*text.expandtabs().splitlines(), ""]:
        if line.strip():
            paragraph.append(line.rstrip())
        elif paragraph:
            blocks += paragraph_blocks(paragraph)
            paragraph = []
    merged: list[Block] = []
    for block in blocks:
        # A blank line inside a code sample splits it; put the pieces back together.
        if block.kind == "pre" and merged and merged[-1].kind == "pre":
            merged[-1] = Block("pre", merged[-1].text + "\n\n" + block.text)
        else:
            merged.append(block)
    return merged


def paragraph_blocks(lines: list[str]) -> list[Block]:
    """Blocks of one paragraph (non-blank lines): an underlined heading, then a bullet list,
    signature lines, a code sample or table, or prose with indented or doctest parts."""
    blocks = []
    if (
        len(lines) >= 2
        and not lines[0][0].isspace()
        and UNDERLINE.fullmatch(lines[1].strip())
        and len(lines[1].strip()) >= len(lines[0].strip()) - 2
    ):
        blocks.append(Block(HEADING_FOR_UNDERLINE[lines[1].strip()[0]], lines[0].strip()))
        lines = lines[2:]
    if lines and BULLET.match(lines[0]):
        items: list[str] = []
        for line in lines:
            if BULLET.match(line):
                items.append(line.strip()[2:].strip())
            else:
                items[-1] += " " + line.strip()
        return [*blocks, Block("ul", "\n".join(items))]
    if lines and not all(SIGNATURE.fullmatch(line.strip()) for line in lines):
        is_table = any(TABLE_BORDER.fullmatch(line) for line in lines)
        if is_table or 2 * sum(bool(CODE_STATEMENT.search(line)) for line in lines) >= len(lines):
            return [*blocks, Block("pre", textwrap.dedent("\n".join(lines)))]
    for indented, group in itertools.groupby(lines, key=lambda line: line[0].isspace()):
        run = list(group)
        if indented:
            body = textwrap.dedent("\n".join(run))
            if looks_like_code(body):
                blocks.append(Block("pre", body))
            else:
                prose = prose_block(" ".join(line.strip() for line in run))
                blocks += [prose] if prose else []
            continue
        if all(SIGNATURE.fullmatch(line.strip()) for line in run):
            # The reference lists related methods as bare signature lines, one per line.
            blocks += [Block("method", line.strip()) for line in run]
            continue
        doctest_at = next((i for i, line in enumerate(run) if line.startswith(">>>")), len(run))
        if doctest_at:
            prose = prose_block(" ".join(line.strip() for line in run[:doctest_at]))
            blocks += [prose] if prose else []
        if doctest_at < len(run):
            blocks.append(Block("pre", "\n".join(run[doctest_at:])))
    return blocks


def prose_block(text: str) -> Block | None:
    """A paragraph; reST's `::` (a code sample follows) reads as a colon, as Sphinx renders it."""
    if text.endswith("::"):
        text = text[:-2].rstrip() if text[:-2].endswith(" ") or text == "::" else text[:-1]
    return Block("p", text) if text else None


def looks_like_code(text: str) -> bool:
    """Whether an indented block is code or grammar rather than indented prose (a note, a
    definition's description): half its lines look like code, or it is mostly symbols."""
    lines = text.splitlines()
    if any(line.startswith(">>>") for line in lines):  # a doctest
        return True
    if 2 * sum(bool(CODE_LINE.search(line)) for line in lines) >= len(lines):
        return True
    letters = sum(ch.isalpha() or ch.isspace() for ch in text)
    return len(text.split()) < 4 or letters < 0.7 * len(text)


# --- HTML rendering ---------------------------------------------------------------------------


INLINE_LITERAL = re.compile(r"``(.+?)``")
ROLE = re.compile(r":[\w:.-]+:`~?([^`]+?)(?:\s*&lt;[^`]*?&gt;)?`")


def inline_html(text: str) -> str:
    """Escaped text with reST inline literals and roles (``x``, :func:`x`) as <code>."""
    escaped = html.escape(text, quote=False)
    escaped = ROLE.sub(r"<code>\1</code>", escaped)
    return INLINE_LITERAL.sub(r"<code>\1</code>", escaped)


def render_blocks(blocks: tuple[Block, ...] | list[Block]) -> str:
    parts = []
    for block in blocks:
        text = html.escape(block.text, quote=False)
        if block.kind in ("h2", "h3"):
            parts.append(f'<{block.kind} id="{anchor(block.text)}">{text}</{block.kind}>')
        elif block.kind == "api":
            parts.append(f'<h2 class="api" id="{anchor(block.text)}"><code>{text}</code></h2>')
        elif block.kind == "method":
            parts.append(f'<h3 class="api" id="{anchor(block.text)}"><code>{text}</code></h3>')
        elif block.kind == "pre":
            parts.append(f'<div class="highlight"><pre>{text}</pre></div>')
        elif block.kind == "ul":
            items = "".join(f"<li>{inline_html(item)}</li>" for item in block.text.split("\n"))
            parts.append(f"<ul>{items}</ul>")
        else:
            parts.append(f"<p>{inline_html(block.text)}</p>")
    return "\n".join(parts)


def anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.split("(")[0].lower()).strip("-") or "section"


SITE_NAV = (
    ("/3/", "Home"),
    ("/3/tutorial/index.html", "Tutorial"),
    ("/3/library/index.html", "Library reference"),
    ("/3/reference/index.html", "Language reference"),
    ("/3/glossary.html", "Glossary"),
    ("/3/search.html", "Search"),
)


def docs_chrome(title: str, path: str, sidebar: str, content: str) -> str:
    """The main site's page: header with site navigation, sidebar, main content, footer."""
    nav = "".join(f'<li><a href="{href}">{label}</a></li>' for href, label in SITE_NAV)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} — Example Python Docs</title>
<link rel="stylesheet" href="/_static/docs.css">
<link rel="canonical" href="https://{DOCS_HOST}{path}">
</head>
<body>
<header class="site-header">
<a class="logo" href="/3/">
<img src="/_static/logo.png" alt="Example Python Docs" width="120" height="40"></a>
<nav class="top-nav" aria-label="Site"><ul>{nav}</ul></nav>
<form class="search" action="/3/search.html">
<input type="search" name="q" placeholder="Search the docs"><button>Go</button></form>
</header>
<div class="layout">
<nav class="sidebar" aria-label="Section contents">
{sidebar}
</nav>
<main id="content">
{content}
</main>
</div>
<footer class="site-footer">
<p>© 2001–2024 Example Docs Project. The text comes from the documentation that ships with
Python.</p>
<p><a href="/privacy.html">Privacy policy</a> · <a href="/terms.html">Terms of use</a> ·
<a href="/3/bugs.html">Report a bug</a> · <a href="/3/about.html">About these documents</a></p>
<p>Last updated on Mar 01, 2024. Created using a static site generator.</p>
</footer>
</body>
</html>
"""


def render_docs_pages(pages: list[DocPage]) -> dict[str, bytes]:
    """Each page (by path) as the main site serves it, with its section's neighbouring pages
    in the sidebar and previous/next links; `pages` must be sorted by path."""
    sections: dict[str, list[DocPage]] = {}
    for page in pages:
        sections.setdefault(page.path.split("/")[2], []).append(page)
    rendered = {}
    for section_name, section in sections.items():
        heading = "Language reference" if section_name == "reference" else "Library reference"
        for at, page in enumerate(section):
            links = "".join(
                f'<li{" class=current" if other is page else ""}><a href="{other.path}">'
                f"{html.escape(other.title.split(' — ')[0])}</a></li>"
                for other in section[max(0, at - 6) : at + 7]
            )
            pager = []
            if at > 0:
                pager.append(f'<a rel="prev" href="{section[at - 1].path}">« Previous</a>')
            if at + 1 < len(section):
                pager.append(f'<a rel="next" href="{section[at + 1].path}">Next »</a>')
            content = (
                f'<article class="document">\n<h1>{html.escape(page.title)}</h1>\n'
                f"{render_blocks(page.blocks)}\n</article>\n"
                f'<div class="pager">{" | ".join(pager)}</div>'
            )
            sidebar = f"<h3>{heading}</h3>\n<ul>{links}</ul>"
            rendered[page.path] = docs_chrome(page.title, page.path, sidebar, content).encode()
    return rendered


def render_mirror_page(page: DocPage) -> str:
    """The page as a third-party mirror shows it: other markup, a cookie banner, an ad box."""
    short_title = html.escape(page.title.split(" — ")[0])
    return f"""<!doctype html>
<html>
<head>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<title>{html.escape(page.title)} | PyDocs Mirror</title>
<script src="/js/analytics.js" async></script>
</head>
<body class="mirror">
<div id="cookie-banner">We use cookies to improve your experience. By continuing to browse this
site you agree to our use of cookies. <a href="/cookies">Learn more</a> <button>Accept</button>
</div>
<div id="topbar"><a href="/">PyDocs Mirror</a> | <a href="/python3/">Python 3</a> |
<a href="/python2/">Python 2</a> | <a href="/downloads/">Downloads</a> |
<a href="/login">Sign in</a></div>
<div id="page">
<div id="main-column">
<div class="breadcrumbs"><a href="/">Home</a> › <a href="/python3/">Python 3</a> › {short_title}
</div>
<div class="doc-body">
<h1>{html.escape(page.title)}</h1>
{render_blocks(page.blocks)}
</div>
</div>
<div id="right-column">
<div class="ad">Sponsored: learn Python in 30 days with our online course.
<a href="/go/course">Start now</a></div>
<div class="widget"><h4>Popular pages</h4><a href="/python3/library/os.html">os</a><br>
<a href="/python3/library/re.html">re</a><br><a href="/python3/library/json.html">json</a></div>
</div>
</div>
<div id="bottom">Mirrored from {DOCS_HOST} and refreshed weekly. PyDocs Mirror is not affiliated
with the original authors. <a href="/contact">Contact</a> · <a href="/dmca">DMCA</a></div>
</body>
</html>
"""


def render_legacy_page(page: DocPage, charset: str) -> str:
    """The page on an old table-layout mirror whose chrome has accented letters of its own."""
    return f"""<html>
<head>
<meta http-equiv="Content-Type" content="text/html; charset={charset}">
<title>{html.escape(page.title)} - Python-Referenz</title>
</head>
<body bgcolor="#ffffff">
<table width="100%" border="0" cellpadding="4">
<tr><td colspan="2" bgcolor="#336699">
<font color="#ffffff" size="+2">Python-Referenz &middot; Archiv</font><br>
<font color="#ffffff" size="-1">Référence · Übersicht · Café-Ecke</font></td></tr>
<tr>
<td valign="top" width="160"><font size="-1"><a href="/">Startseite</a><br>
<a href="/doku/">Dokumentation</a><br><a href="/gaestebuch.html">Gästebuch</a><br>
<a href="/impressum.html">Impressum</a></font></td>
<td valign="top">
<h1>{html.escape(page.title)}</h1>
{render_blocks(page.blocks)}
</td>
</tr>
<tr><td colspan="2"><font size="-2">Zuletzt geändert: 12.05.2009 ·
Diese Seite ist für Netscape 4 optimiert · © 1999-2009</font></td></tr>
</table>
</body>
</html>
"""


def render_not_found_page() -> bytes:
    sidebar = '<h3>Library reference</h3>\n<ul><li><a href="/3/library/index.html">Index</a></ul>'
    content = (
        "<h1>Page not found</h1>\n<p>Sorry, the page you asked for does not exist in this "
        'version of the documentation. Try the <a href="/3/search.html">search</a>.</p>'
    )
    return docs_chrome("Page not found", "/404.html", sidebar, content).encode("utf-8")


def render_redirect_body(target: str) -> bytes:
    escaped = html.escape(target)
    return (
        "<html><head><title>301 Moved Permanently</title></head><body>"
        f'<h1>Moved Permanently</h1><p>The document has moved <a href="{escaped}">here</a>.</p>'
        "</body></html>\n"
    ).encode("utf-8")


def robots_txt(origin: str) -> bytes:
    return (
        "User-agent: *\n"
        "Disallow: /search\n"
        "Disallow: /_static/tmp/\n"
        "Crawl-delay: 2\n"
        f"Sitemap: {origin}/sitemap.xml\n"
    ).encode("utf-8")


def png_image(width: int, height: int, rng: random.Random) -> bytes:
    """A valid 8-bit RGB PNG of a seeded colour gradient (a figure the crawler fetched)."""
    red, green = rng.randrange(256), rng.randrange(256)
    rows = b"".join(
        b"\x00"  # filter type "none" for the row
        + bytes(value for x in range(width) for value in ((red + x) % 256, (green + y) % 256, 128))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


# --- Junk pages: what quality filters are for -------------------------------------------------

SPAM_WORDS = (
    "python", "tutorial", "free", "download", "best", "cheap", "course", "online", "learn",
    "fast", "certificate", "coding", "bootcamp", "2024", "deal", "easy",
)  # fmt: skip


def spam_page(title: str, body: str) -> bytes:
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>
<body>
<div class="top"><a href="/">Home</a> | <a href="/deals">Deals</a> | <a href="/contact">Contact</a>
</div>
<div class="content">
{body}
</div>
<div class="bottom">© Deals Network. All rights reserved.</div>
</body></html>
""".encode("utf-8")


def keyword_stuffing_page(rng: random.Random) -> bytes:
    paragraphs = "\n".join(
        "<p>" + " ".join(rng.choice(SPAM_WORDS) for _ in range(60)) + "</p>" for _ in range(8)
    )
    heading = "<h1>Python free download</h1>"
    return spam_page("Best Free Python Tutorial Download", f"{heading}\n{paragraphs}")


def repeated_line_page(rng: random.Random) -> bytes:
    line = "<p>Limited offer: claim your free Python certificate today, click the link below!</p>"
    return spam_page("Free Python certificate", "\n".join([line] * rng.randrange(40, 80)))


def navigation_only_page(rng: random.Random) -> bytes:
    links = "\n".join(
        f'<li><a href="/category/{i}">'
        f"{rng.choice(SPAM_WORDS).title()} {rng.choice(SPAM_WORDS)}</a></li>"
        for i in range(rng.randrange(30, 60))
    )
    return spam_page("Categories", f'<nav class="menu"><ul>\n{links}\n</ul></nav>')


def too_short_page(rng: random.Random) -> bytes:
    heading, line = rng.choice(
        [
            ("Coming soon", "This page is under construction."),
            ("Nothing here yet", "Check back later for new tips."),
            ("Oops", "No posts in this category."),
        ]
    )
    return spam_page(heading, f"<h1>{heading}</h1><p>{line}</p>")


def symbol_soup_page(rng: random.Random) -> bytes:
    symbols = "#$%&*@!~^|<>{}[]+=_/\\0123456789"
    lines = "\n".join(
        "<p>" + html.escape("".join(rng.choices(symbols, k=rng.randrange(30, 70)))) + "</p>"
        for _ in range(rng.randrange(20, 40))
    )
    return spam_page("###", lines)


def bullet_spam_page(rng: random.Random) -> bytes:
    items = "<br>\n".join(
        "• " + " ".join(rng.choices(SPAM_WORDS, k=3)) for _ in range(rng.randrange(40, 70))
    )
    return spam_page("Top deals", f"<h1>Top deals</h1>\n<p>{items}</p>")


JUNK_PAGES = {
    "keyword-stuffing": keyword_stuffing_page,
    "repeated-line": repeated_line_page,
    "navigation-only": navigation_only_page,
    "too-short": too_short_page,
    "symbol-soup": symbol_soup_page,
    "bullet-spam": bullet_spam_page,
}
