"""`QualityClassifier`: the probability that a text reads like the curated reference text a
supervised fastText model was trained on (`lmforge quality train`).

Models load with the in-process predict-only `fasttext` module (fasttext-predict, the build
language ID uses); only training needs the full build, in a subprocess (`fasttext_trainer`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import fasttext
import numpy as np

from lmforge.errors import LmforgeError, one_line

# The model's two labels, here only: training files are written with them, scores read them.
POSITIVE_LABEL = "__label__hq"
NEGATIVE_LABEL = "__label__lq"
LABELS = (POSITIVE_LABEL, NEGATIVE_LABEL)

# fastText splits words on ASCII whitespace and NUL, and a newline ends an example.
_SEPARATORS = re.compile(r"[\s\x00]+")


class QualityClassifierError(LmforgeError, ValueError):
    """A quality model file that is missing, not a fastText model, or not a quality classifier."""


def normalize_text(text: str) -> str:
    """`text` as fastText sees one example, for training and scoring alike: lowercased, every
    run of whitespace (newlines included) one space, no leading or trailing space."""
    return _SEPARATORS.sub(" ", text.lower()).strip()


class QualityClassifier:
    """A supervised fastText model with the labels `LABELS`; `score` is the positive label's
    probability. Build one with `QualityClassifier.load(path)`."""

    def __init__(self, model: fasttext.FastText._FastText, path: Path) -> None:
        self._model = model
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> QualityClassifier:
        """Load `model.bin` written by `lmforge quality train` (or a training output folder
        holding one). Raises QualityClassifierError naming the file when it is missing, is not
        a fastText model, or is a fastText model with other labels (a language-ID model)."""
        path = Path(path)
        if path.is_dir():
            path = path / "model.bin"
        if not path.is_file():
            raise QualityClassifierError(
                f"quality model {path} does not exist: train one with `lmforge quality train`"
            )
        try:
            model = fasttext.load_model(str(path))
        except (ValueError, RuntimeError, MemoryError) as error:  # wrong magic, or cut short
            raise QualityClassifierError(
                f"{path} is not a fastText model ({one_line(error, 200)}): pass the model.bin "
                "that `lmforge quality train` wrote"
            ) from error
        # An empty line still predicts (from the end-of-line token): every label comes back.
        labels, _ = model.predict("", k=-1)
        if sorted(labels) != sorted(LABELS):
            raise QualityClassifierError(
                f"{path} is a fastText model with the labels {', '.join(sorted(labels))}, not "
                f"a quality classifier ({', '.join(LABELS)}): pass the model.bin that "
                "`lmforge quality train` wrote"
            )
        return cls(model, path)

    def score(self, text: str) -> float:
        """The probability, in [0, 1], that `text` belongs to the positive class; 0.0 for a
        text with no words (fastText would answer from the end-of-line token alone)."""
        line = normalize_text(text)
        if not line:
            return 0.0
        labels, probabilities = self._model.predict(line, k=-1)
        for label, probability in zip(labels, probabilities, strict=True):
            if label == POSITIVE_LABEL:
                return min(max(float(probability), 0.0), 1.0)  # softmax can round past 1
        return 0.0

    def score_many(self, texts: Iterable[str]) -> np.ndarray:
        """`score` of each text, as a float64 array in input order."""
        # One call per text: fasttext-predict's batch call returns labels without probabilities.
        return np.array([self.score(text) for text in texts], dtype=np.float64)
