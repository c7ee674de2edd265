import json

import numpy as np
import pytest

from lmforge.manifest import sha256_file
from lmforge.tasks.tokens.tokenizer import (
    EOT_TOKEN,
    PAD_TOKEN,
    LanguageSampling,
    TokenizerConfig,
    TokenizerError,
    decode_document,
    document_copies,
    encode_documents,
    flatten_encodings,
    load_tokenizer,
    special_token_ids,
    to_valid_utf8,
    tokenizer_sha256,
    tokenizer_vocab_size,
    train_tokenizer,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "Pack my box with five dozen liquor jugs; the dog sleeps. " * 20,
    "def tokenize(text):\n    return text.split()\n" * 10,
]

HARD_TEXTS = {
    "cjk": "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "emoji": "ok 😀👍🏽 family: 👨‍👩‍👧‍👦 flag: 🇩🇪 keycap: 1️⃣",
    "combining": "e\u0301 a\u0308 n\u0303 Zalgo: Z\u0351\u0357\u034ca\u0350l\u0346g\u0315o",
    "controls_and_whitespace": "tab\there\r\nnul\x00del\x7f  double  space \u00a0nbsp\u2028",
    "rtl_and_math": "שלום مرحبا ∑∫√∞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "leading_space": "  starts with spaces and ends with a newline\n",
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, TokenizerConfig(vocab_size=400, min_frequency=2))


@pytest.mark.parametrize("name", sorted(HARD_TEXTS))
def test_decoding_a_document_gives_back_its_exact_text(tokenizer, name):
    text = HARD_TEXTS[name]
    [ids] = encode_documents(tokenizer, [text])
    assert decode_document(tokenizer, ids) == text


def test_characters_never_seen_in_training_still_encode_byte_by_byte(tokenizer):
    # The corpus is ASCII: every CJK/emoji byte must come from the byte alphabet, with no unknowns.
    [ids] = encode_documents(tokenizer, [HARD_TEXTS["cjk"]])
    assert len(ids) - 1 == len(HARD_TEXTS["cjk"].encode("utf-8"))
    assert all(0 <= i < tokenizer_vocab_size(tokenizer) for i in ids)


def test_special_tokens_are_endoftext_zero_and_pad_one(tokenizer):
    ids = special_token_ids(tokenizer)
    assert (ids.eot_id, ids.pad_id) == (0, 1)
    assert tokenizer.id_to_token(0) == EOT_TOKEN and tokenizer.id_to_token(1) == PAD_TOKEN


def test_every_encoded_document_ends_with_exactly_one_endoftext(tokenizer):
    encoded = encode_documents(tokenizer, ["one document", "another one"])
    for ids in encoded:
        assert ids[-1] == 0 and 0 not in ids[:-1]


def test_special_token_text_inside_a_document_stays_ordinary_text(tokenizer, tmp_path):
    text = f"a page that mentions {EOT_TOKEN} and {PAD_TOKEN} literally"
    [ids] = encode_documents(tokenizer, [text])
    assert 0 not in ids[:-1] and 1 not in ids
    assert decode_document(tokenizer, ids) == text
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    [reloaded_ids] = encode_documents(load_tokenizer(tmp_path / "tokenizer.json"), [text])
    assert reloaded_ids == ids


def test_lone_surrogates_become_replacement_characters():
    assert to_valid_utf8("bad \ud800 page \udfff") == "bad \ufffd page \ufffd"


def test_split_surrogate_pair_is_joined_back_into_its_character():
    assert to_valid_utf8("smile \ud83d\ude00!") == "smile 😀!"


def test_valid_text_is_returned_unchanged():
    text = HARD_TEXTS["emoji"]
    assert to_valid_utf8(text) is text


def test_training_on_text_with_lone_surrogates_succeeds_and_round_trips():
    tok = train_tokenizer(CORPUS + ["broken \udc80 bytes"], TokenizerConfig(vocab_size=300))
    [ids] = encode_documents(tok, [to_valid_utf8("broken \udc80 bytes")])
    assert decode_document(tok, ids) == "broken \ufffd bytes"


def test_training_is_deterministic():
    first = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=350))
    second = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=350))
    assert first.to_str() == second.to_str()


def test_vocab_size_is_capped_by_the_request_and_learns_merges(tokenizer):
    assert 258 < tokenizer_vocab_size(tokenizer) <= 400
    # frequent words of the corpus became single tokens
    assert len(tokenizer.encode(" quick").ids) == 1


def test_saved_tokenizer_loads_and_its_sha256_is_the_file_digest(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    loaded = load_tokenizer(path)
    assert loaded.to_str() == tokenizer.to_str()
    assert tokenizer_sha256(path) == sha256_file(path)


def test_too_small_vocab_size_is_rejected_with_the_minimum():
    with pytest.raises(ValueError, match="at least 258"):
        TokenizerConfig(vocab_size=100)


def test_loading_a_missing_tokenizer_names_the_path(tmp_path):
    with pytest.raises(TokenizerError, match="nowhere.json"):
        load_tokenizer(tmp_path / "nowhere.json")


def test_loading_a_tokenizer_without_special_tokens_is_refused(tokenizer, tmp_path):
    document = json.loads(tokenizer.to_str())
    document["added_tokens"] = []
    del document["model"]["vocab"][EOT_TOKEN]
    del document["model"]["vocab"][PAD_TOKEN]
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(document))
    with pytest.raises(TokenizerError, match=r"foreign\.json.*<\|endoftext\|>"):
        load_tokenizer(path)


def test_loading_garbage_names_the_file(tmp_path):
    path = tmp_path / "garbage.json"
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="garbage.json"):
        load_tokenizer(path)


def test_flat_encoding_is_the_documents_tokens_end_to_end(tokenizer):
    texts = [HARD_TEXTS["cjk"], "", HARD_TEXTS["emoji"], CORPUS[0]]
    eot_id = special_token_ids(tokenizer).eot_id
    encodings = tokenizer.encode_batch_fast(texts)
    tokens, lengths = flatten_encodings(encodings, eot_id, np.dtype(np.uint16))
    expected = encode_documents(tokenizer, texts)
    assert tokens.dtype == np.uint16 and lengths.tolist() == [len(ids) for ids in expected]
    assert tokens.tolist() == [token for ids in expected for token in ids]


BYTES = {"en": 9_000, "de": 900, "ja": 100}


def test_temperature_one_without_a_byte_cap_keeps_every_document_once():
    rates = LanguageSampling(temperature=1.0).rates(BYTES)
    assert rates == pytest.approx({"en": 1.0, "de": 1.0, "ja": 1.0})


def test_a_higher_temperature_moves_bytes_from_the_dominant_language_to_small_ones():
    sampling = LanguageSampling(temperature=3.0, max_bytes=5_000, max_repeats=4)
    rates = sampling.rates(BYTES)
    sampled = {lang: rates[lang] * size for lang, size in BYTES.items()}
    assert sum(sampled.values()) == pytest.approx(5_000)
    natural = {lang: size / sum(BYTES.values()) for lang, size in BYTES.items()}
    share = {lang: size / 5_000 for lang, size in sampled.items()}
    assert share["en"] < natural["en"] and share["ja"] > natural["ja"]
    # q ~ bytes^(1/3) between the languages that are not capped
    assert share["en"] / share["de"] == pytest.approx(10 ** (1 / 3))
    assert rates["en"] < 1


def test_a_share_beyond_max_repeats_is_capped_and_given_to_the_other_languages():
    rates = LanguageSampling(weights={"en": 1, "ja": 1}, max_repeats=4).rates(BYTES)
    # The budget is all 10,000 bytes; ja can give at most 4 x 100, en takes the rest.
    assert rates["ja"] == pytest.approx(4.0)
    assert rates["en"] == pytest.approx(9_600 / 9_000)
    assert rates["de"] == 0.0  # not named by the weights: left out


def test_language_weights_must_name_a_language_with_text():
    with pytest.raises(ValueError, match="name none of the languages with text"):
        LanguageSampling(weights={"fr": 1.0}).rates(BYTES)
    with pytest.raises(ValueError, match="give no language a share"):
        LanguageSampling(weights={"en": 0.0})
    with pytest.raises(ValueError, match="temperature must be positive"):
        LanguageSampling(temperature=0)
    with pytest.raises(ValueError, match="max_repeats"):
        LanguageSampling(max_repeats=0)


def test_document_copies_are_seeded_per_document_and_average_to_the_rate():
    ids = [f"doc-{i}" for i in range(4000)]
    copies = [document_copies(doc_id, 1.25, seed=0) for doc_id in ids]
    assert set(copies) == {1, 2}
    assert sum(copies) / len(ids) == pytest.approx(1.25, abs=0.03)
    assert copies == [document_copies(doc_id, 1.25, seed=0) for doc_id in ids]
    assert copies != [document_copies(doc_id, 1.25, seed=1) for doc_id in ids]
    assert {document_copies(doc_id, 3.0, seed=0) for doc_id in ids[:50]} == {3}
    assert {document_copies(doc_id, 0.0, seed=0) for doc_id in ids[:50]} == {0}
