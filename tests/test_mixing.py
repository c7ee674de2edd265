"""Data mixing at shard build: copies per document from source x language weights, the val
split left unweighted, copies shuffled apart, and the manifest's per-bucket accounting."""

import math
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_shards import SMALL, read_split, tokens_by_document

from lmforge.manifest import stage_output
from lmforge.tasks.tokens.mixing import (
    TALLY_FIELDS,
    MixingWeights,
    MixTally,
    check_weights,
    weighted_copies,
)
from lmforge.tasks.tokens.shards import (
    ShardConfig,
    ShardError,
    build_shards,
    is_validation_document,
)
from lmforge.tasks.tokens.tokenizer import encode_documents, load_tokenizer

IDS = [f"doc-{i:06d}" for i in range(20_000)]
WORDS = "the of and to in is was for on that with as by at from it his an were are which".split()
SOURCES = ["a.example", "b.example", "c.example", None]


# --- the arithmetic ----------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.1, 0.5, 1.25, 2.7])
def test_expected_copies_over_many_documents_equal_the_weight(weight):
    copies = [weighted_copies(doc_id, weight, seed=0) for doc_id in IDS]
    assert set(copies) == {math.floor(weight), math.floor(weight) + 1}
    assert np.mean(copies) == pytest.approx(weight, abs=0.015)


@pytest.mark.parametrize("weight", [0, 1, 2, 5])
def test_integer_weights_give_exactly_that_many_copies(weight):
    assert {weighted_copies(doc_id, float(weight), seed=3) for doc_id in IDS[:500]} == {weight}


def test_copies_are_a_pure_function_of_document_and_seed():
    first = [weighted_copies(doc_id, 0.5, seed=0) for doc_id in IDS[:2000]]
    assert first == [weighted_copies(doc_id, 0.5, seed=0) for doc_id in IDS[:2000]]
    assert first[::-1] == [weighted_copies(doc_id, 0.5, seed=0) for doc_id in IDS[:2000][::-1]]
    assert first != [weighted_copies(doc_id, 0.5, seed=1) for doc_id in IDS[:2000]]


def test_a_document_weighs_its_source_weight_times_its_language_weight():
    weights = MixingWeights(sources={"a.example": 2, "*": 0.5}, languages={"de": 3, "ja": 0})
    assert weights.weight("a.example", "de") == 6
    assert weights.weight("a.example", "en") == 2  # en unnamed, no `*`: 1.0
    assert weights.weight("b.example", "de") == 1.5  # b unnamed: the `*` weight
    assert weights.weight(None, "en") == 0.5  # no source: the `*` bucket
    assert weights.source_bucket("b.example") == weights.source_bucket(None) == "*"
    assert weights.source_bucket("a.example") == "a.example"
    assert {weights.copies(doc_id, "a.example", "ja") for doc_id in IDS[:500]} == {0}
    assert {weights.copies(doc_id, "a.example", "de") for doc_id in IDS[:500]} == {6}
    assert MixingWeights().is_uniform and MixingWeights(languages={"en": 1}).is_uniform
    assert not weights.is_uniform


def test_the_tally_counts_before_and_after_weighting_per_bucket_and_lists_named_buckets():
    tally = MixTally()
    tally.add(["en", "de", "en"], ["*", "a", "a"], np.array([10, 20, 30]),
              np.array([40, 80, 120]), np.array([0, 2, 3]))  # fmt: skip
    tally.add(["de"], ["*"], np.array([5]), np.array([9]), np.array([1]))
    weights = MixingWeights(sources={"a": 2, "unseen": 4}, languages={"ja": 2, "*": 1})
    summary = tally.summary(weights, weighted=True)
    assert summary["by_language"]["en"] == {
        "weight": 1.0, "documents_before": 2, "tokens_before": 40, "bytes_before": 160,
        "documents_after": 3, "tokens_after": 90, "bytes_after": 360,
    }  # fmt: skip
    assert summary["by_source"]["a"]["tokens_after"] == 2 * 20 + 3 * 30
    assert summary["by_source"]["unseen"] == {"weight": 4.0, **dict.fromkeys(TALLY_FIELDS, 0)}
    assert summary["by_language"]["ja"]["weight"] == 2.0 and "*" not in summary["by_language"]
    assert tally.total("tokens_after") == 90 + 40 + 5 == tally.total("tokens_after")
    assert tally.after_by_language("documents") == {"de": 3, "en": 3}
    assert tally.summary(weights, weighted=False)["by_source"]["a"]["weight"] == 1.0


@pytest.mark.parametrize(
    "weights, problem",
    [
        ({"en": -1.0}, "finite and >= 0"),
        ({"en": float("nan")}, "finite and >= 0"),
        ({"en": float("inf")}, "finite and >= 0"),
        ({"en": "2"}, "must be a number"),
        ({"*": 0.0, "en": 0.0}, "every weight is 0"),
        ({"": 1.0}, "empty name"),
    ],
)
def test_check_weights_refuses_weights_that_cannot_mix(weights, problem):
    with pytest.raises(ValueError, match=problem):
        check_weights(weights)


def test_zero_for_some_buckets_is_accepted_and_no_weights_mean_none():
    assert check_weights({"en": 0, "de": 2}) == {"en": 0.0, "de": 2.0}  # others keep 1.0
    assert check_weights({}) is None and check_weights(None) is None


# --- the config --------------------------------------------------------------------------------


def test_the_shard_config_takes_mix_weights_from_the_command_line_form():
    config = ShardConfig(mix_source_weights="docs.python.org=3, *=0.5", mix_language_weights="de=2")
    assert config.mix_source_weights == {"docs.python.org": 3.0, "*": 0.5}
    assert config.mix_language_weights == {"de": 2.0}
    assert config.language_weights is None  # the tokenizer sample's weights are a separate field
    assert config.mixing_weights() == MixingWeights({"docs.python.org": 3.0, "*": 0.5},
                                                    {"de": 2.0}, 0)  # fmt: skip
    assert ShardConfig(mix_language_weights="").mix_language_weights is None


@pytest.mark.parametrize("field", ["mix_source_weights", "mix_language_weights"])
@pytest.mark.parametrize(
    "value",
    ["en=-1", "en=nan", "en=inf", "en=abc", "en", "*=0",
     {"*": 0, "de": 0}, {"en": True}, {"en": None}],  # fmt: skip
)
def test_invalid_mix_weights_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"(?m)^{field}\b"):
        ShardConfig(**{field: value})


@pytest.mark.parametrize("value", [-1, 2**64])
def test_an_out_of_range_mix_seed_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match=r"(?m)^mix_seed\b"):
        ShardConfig(mix_seed=value)


# --- a build with weights ----------------------------------------------------------------------


def make_documents(count):
    rng = random.Random(5)
    return [
        {
            "id": f"doc-{i:05d}",
            "text": " ".join(rng.choices(WORDS, k=rng.randint(5, 60))),
            "lang": rng.choice(["en", "en", "de", "ja", None]),
            "source": SOURCES[i % len(SOURCES)],
        }
        for i in range(count)
    ]


def make_data_dir(path, documents, *, with_source=True):
    """A finished data stage output whose docs/ holds `documents` in two files."""
    with stage_output(path, "data_refresh", params={}) as stage:
        (stage.path / "docs").mkdir()
        columns = ["id", "text", "lang"] + (["source"] if with_source else [])
        for part in range(2):
            rows = documents[part::2]
            table = pa.table({c: pa.array([d[c] for d in rows], pa.string()) for c in columns})
            pq.write_table(table, stage.path / "docs" / f"part-{part:05d}.parquet")
    return path


MIX = dict(
    mix_source_weights={"a.example": 3, "c.example": 0, "*": 1.5},
    mix_language_weights={"de": 0.5, "ja": 2},
)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    documents = make_documents(240)
    data = make_data_dir(root / "data", documents)
    plain = build_shards(data, root / "plain", ShardConfig(**SMALL))
    manifest = build_shards(data, root / "mixed", ShardConfig(**SMALL, **MIX))
    return documents, data, root, plain, manifest


def expected_copies(documents, config):
    weights = config.mixing_weights()
    return {
        d["id"]: weights.copies(d["id"], d["source"], d["lang"] or "und")
        for d in documents
        if not is_validation_document(d["id"], config.val_fraction)
    }


def test_each_train_document_appears_as_often_as_its_weight_draws(mixed):
    documents, _, root, _, manifest = mixed
    copies = expected_copies(documents, ShardConfig(**SMALL, **MIX))
    assert set(copies.values()) == {0, 1, 2, 3, 6}  # the weights really repeat and drop
    tokenizer = load_tokenizer(root / "mixed" / "tokenizer.json")
    texts = [d["text"] for d in documents]
    encoded = dict(zip((d["id"] for d in documents), encode_documents(tokenizer, texts)))
    found = tokens_by_document(root / "mixed", "train")
    assert found == {doc_id: encoded[doc_id] * n for doc_id, n in copies.items() if n}
    assert not any(d["source"] == "c.example" for d in documents if d["id"] in found)
    train = manifest["splits"]["train"]
    assert train["documents"] == sum(copies.values())
    assert train["tokens"] == sum(len(tokens) for tokens in found.values())


def test_the_manifest_records_realized_tokens_per_bucket_as_the_shards_hold_them(mixed):
    documents, _, root, plain, manifest = mixed
    by_id = {d["id"]: d for d in documents}
    for split in ("train", "val"):
        held = {doc_id: len(t) for doc_id, t in tokens_by_document(root / "mixed", split).items()}
        entry = manifest["mixing"][split]
        assert entry["weighted"] == (split == "train")
        named = ("a.example", "c.example")
        for dimension, bucket_of in [
            ("by_language", lambda d: d["lang"] or "und"),
            ("by_source", lambda d: d["source"] if d["source"] in named else "*"),
        ]:
            realized = Counter()
            for doc_id, tokens in held.items():
                realized[bucket_of(by_id[doc_id])] += tokens
            after = {k: v["tokens_after"] for k, v in entry[dimension].items() if v["tokens_after"]}
            assert after == dict(realized)
            assert sum(v["tokens_before"] for v in entry[dimension].values()) == (
                plain["splits"][split]["tokens"]
            )
        before = {k: v["tokens_before"] for k, v in entry["by_language"].items()}
        assert before == plain["splits"][split]["tokens_by_language"]
        assert manifest["splits"][split]["tokens_by_language"] == {
            k: v["tokens_after"] for k, v in entry["by_language"].items() if v["tokens_after"]
        }
    train = manifest["mixing"]["train"]
    assert train["by_source"]["c.example"]["documents_after"] == 0
    assert train["by_source"]["c.example"]["documents_before"] > 0
    assert train["by_source"]["a.example"]["weight"] == 3.0
    assert train["by_language"]["ja"]["weight"] == 2.0


def test_validation_is_the_unweighted_held_out_set_and_shares_no_document_with_train(mixed):
    _, _, root, plain, manifest = mixed
    val_rows = [
        doc_id
        for _, table in read_split(root / "mixed", "val")
        for doc_id in table.column("doc_id").to_pylist()
    ]
    val = tokens_by_document(root / "mixed", "val")
    assert not set(val) & set(tokens_by_document(root / "mixed", "train"))
    assert all(tokens.count(0) == 1 for tokens in val.values())  # each document once
    assert len(set(val_rows)) == manifest["splits"]["val"]["documents"]
    plain_val = [o["sha256"] for o in plain["outputs"] if o["path"].startswith("val/")]
    assert [o["sha256"] for o in manifest["outputs"] if o["path"].startswith("val/")] == plain_val
    assert manifest["splits"]["val"] == plain["splits"]["val"]
    assert manifest["tokenizer"] == plain["tokenizer"]  # the mix does not shape the vocabulary


def test_copies_of_a_document_are_shuffled_apart(mixed):
    *_, root, _, manifest = mixed
    neighbours = 0
    for _, table in read_split(root / "mixed", "train"):
        ids = table.column("doc_id").to_pylist()
        # Within a shard a document is one piece, so equal neighbours are two copies.
        neighbours += sum(a == b for a, b in zip(ids, ids[1:]))
    repeated = sum(
        v["documents_after"] - v["documents_before"]
        for v in manifest["mixing"]["train"]["by_language"].values()
        if v["documents_after"] > v["documents_before"]
    )
    assert repeated > 50
    assert neighbours <= repeated * 0.05


def test_weights_that_give_every_document_weight_one_leave_the_shards_byte_identical(
    mixed, tmp_path
):
    _, data, _, plain, _ = mixed
    config = ShardConfig(**SMALL, mix_source_weights={"absent.example": 2, "*": 1})
    assert not config.mixing_weights().is_uniform  # takes the weighted path
    same = build_shards(data, tmp_path / "same", config)
    assert same["outputs"] == plain["outputs"]
    assert same["splits"] == plain["splits"]
    assert same["mixing"]["train"]["by_source"]["absent.example"]["documents_before"] == 0


def test_the_default_config_records_an_identity_mix(mixed):
    *_, plain, _ = mixed
    assert plain["params"]["mix_source_weights"] is None
    for split in ("train", "val"):
        buckets = plain["mixing"][split]["by_language"] | plain["mixing"][split]["by_source"]
        assert list(plain["mixing"][split]["by_source"]) == ["*"]
        for entry in buckets.values():
            assert entry["weight"] == 1.0
            for name in ("documents", "tokens", "bytes"):
                assert entry[f"{name}_before"] == entry[f"{name}_after"]


def test_source_weights_on_a_dataset_without_sources_are_refused_before_any_work(tmp_path):
    data = make_data_dir(tmp_path / "data", make_documents(30), with_source=False)
    config = ShardConfig(**SMALL, mix_source_weights={"a.example": 2})
    with pytest.raises(ShardError, match=r"part-00000\.parquet lacks the column source"):
        build_shards(data, tmp_path / "shards", config)
    assert not (tmp_path / "shards").exists()
    build_shards(data, tmp_path / "by-language", ShardConfig(**SMALL, mix_language_weights="de=2"))


def test_weights_that_drop_every_train_document_are_an_error(mixed, tmp_path):
    _, data, *_ = mixed
    config = ShardConfig(**SMALL, mix_source_weights={"*": 0, "absent.example": 1})
    with pytest.raises(ShardError, match="mixing weights drop all"):
        build_shards(data, tmp_path / "shards", config)
    assert not (tmp_path / "shards").exists()
