import random
import shutil
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.manifest import (
    ManifestError,
    manifest_digest,
    read_manifest,
    sha256_file,
    stage_output,
)
from lmforge.model.shard_format import token_dtype
from lmforge.tasks.tokens.shards import (
    ShardConfig,
    ShardError,
    build_shards,
    is_validation_document,
    read_ahead,
    verify_shards,
)
from lmforge.tasks.tokens.tokenizer import (
    TokenizerConfig,
    decode_document,
    encode_documents,
    load_tokenizer,
    train_tokenizer,
)

WORDS = "the of and to in is was for on that with as by at from it his an were are which".split()
WORDS += ["東京", "首都", "😀", "naïve", "Straße", "привет"]


def make_documents(count, *, start=0, seed=0):
    rng = random.Random(seed + start)
    return [
        {
            "id": f"doc-{i:05d}",
            "text": " ".join(rng.choices(WORDS, k=rng.randint(5, 120))),
            "lang": rng.choice(["en", "en", "de", "ja", None]),
        }
        for i in range(start, start + count)
    ]


def make_data_dir(path, documents, files=1):
    """A finished data stage output whose docs/ holds `documents` spread over `files` parts."""
    with stage_output(path, "data_refresh", params={}) as stage:
        (stage.path / "docs").mkdir()
        for part in range(files):
            rows = documents[part::files]
            table = pa.table(
                {
                    "id": pa.array([d["id"] for d in rows], pa.string()),
                    "url": pa.array([f"https://example.org/{d['id']}" for d in rows], pa.string()),
                    "text": pa.array([d["text"] for d in rows], pa.string()),
                    "lang": pa.array([d["lang"] for d in rows], pa.string()),
                }
            )
            pq.write_table(table, stage.path / "docs" / f"part-{part:05d}.parquet")
    return path


def read_split(shards_dir, split):
    """[(shard path, table)] of a split, in shard order."""
    paths = sorted((shards_dir / split).glob("shard-*.arrow"))
    return [(p, pa.ipc.open_file(pa.memory_map(str(p))).read_all()) for p in paths]


def tokens_by_document(shards_dir, split):
    """doc_id -> its tokens, joining the pieces a shard boundary cut apart."""
    joined = defaultdict(list)
    for _, table in read_split(shards_dir, split):
        for doc_id, tokens in zip(
            table.column("doc_id").to_pylist(), table.column("tokens").to_pylist()
        ):
            joined[doc_id] += tokens
    return dict(joined)


SMALL = dict(vocab_size=320, shard_tokens=1000, val_fraction=0.2, batch_size=64)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    documents = make_documents(300)
    data = make_data_dir(root / "data", documents, files=3)
    manifest = build_shards(data, root / "shards", ShardConfig(**SMALL))
    return documents, data, root / "shards", manifest


def test_shards_hold_exactly_each_documents_tokens_followed_by_one_endoftext(built):
    documents, _, shards, manifest = built
    tokenizer = load_tokenizer(shards / "tokenizer.json")
    expected = dict(
        zip(
            (d["id"] for d in documents),
            encode_documents(tokenizer, [d["text"] for d in documents]),
        )
    )
    found = {**tokens_by_document(shards, "train"), **tokens_by_document(shards, "val")}
    assert found == expected
    assert sum(len(t) for t in found.values()) == sum(len(encoded) for encoded in expected.values())
    assert all(tokens.count(0) == 1 and tokens[-1] == 0 for tokens in found.values())
    texts = {d["id"]: d["text"] for d in documents}
    assert all(
        decode_document(tokenizer, tokens) == texts[doc_id] for doc_id, tokens in found.items()
    )
    assert manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"] == len(
        np.concatenate([t for t in found.values()])
    )


def test_every_shard_but_the_last_holds_exactly_shard_tokens(built):
    *_, shards, manifest = built
    for split in ("train", "val"):
        sizes = [
            len(table.column("tokens").combine_chunks().values)
            for _, table in read_split(shards, split)
        ]
        assert len(sizes) == manifest["splits"][split]["shards"]
        assert sizes[:-1] == [SMALL["shard_tokens"]] * (len(sizes) - 1)
        assert 0 < sizes[-1] <= SMALL["shard_tokens"]
        assert sum(sizes) == manifest["splits"][split]["tokens"]
    assert manifest["splits"]["train"]["shards"] > 3  # the test really crosses shard boundaries


def test_each_shard_is_one_record_batch_with_contract_schema_and_metadata(built):
    *_, shards, manifest = built
    path = shards / "train" / "shard-00000.arrow"
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    assert reader.num_record_batches == 1
    assert reader.schema.field("doc_id").type == pa.string()
    assert reader.schema.field("tokens").type == pa.list_(pa.uint16())
    assert (
        reader.schema.metadata[b"lmforge.vocab_size"]
        == str(manifest["tokenizer"]["vocab_size"]).encode()
    )
    assert reader.schema.metadata[b"lmforge.eot_id"] == b"0"
    values = reader.read_all().column("tokens").combine_chunks().values.to_numpy()
    assert values.dtype == np.uint16 and len(values) == SMALL["shard_tokens"]


def test_manifest_records_tokenizer_split_counts_languages_and_source(built):
    documents, data, shards, manifest = built
    assert manifest["stage"] == "build_shards"
    assert manifest["tokenizer"] == {
        "sha256": sha256_file(shards / "tokenizer.json"),
        "vocab_size": load_tokenizer(shards / "tokenizer.json").get_vocab_size(),
        "eot_id": 0,
        "pad_id": 1,
    }
    assert manifest["source_manifest_sha256"] == manifest_digest(data)
    assert manifest["inputs"][0]["manifest_sha256"] == manifest_digest(data)
    assert manifest["params"]["shard_tokens"] == SMALL["shard_tokens"]
    for split in ("train", "val"):
        chosen = [d for d in documents if is_validation_document(d["id"], 0.2) == (split == "val")]
        counts = manifest["splits"][split]
        assert counts["documents"] == len(chosen)
        assert counts["bytes"] == sum(len(d["text"].encode("utf-8")) for d in chosen)
        assert sum(counts["tokens_by_language"].values()) == counts["tokens"]
        assert set(counts["tokens_by_language"]) == {d["lang"] or "und" for d in chosen}
        for lang in counts["tokens_by_language"]:
            in_lang = [d for d in chosen if (d["lang"] or "und") == lang]
            assert counts["documents_by_language"][lang] == len(in_lang)
            assert counts["bytes_by_language"][lang] == sum(
                len(d["text"].encode("utf-8")) for d in in_lang
            )
    sample = manifest["tokenizer_sample"]
    assert sample["bytes"] == sum(sample["bytes_by_language"].values()) > 0
    assert set(sample["rates"]) == set(manifest["splits"]["train"]["tokens_by_language"])
    assert manifest["counts"]["documents_in_data"] == len(documents)


def test_documents_are_shuffled_within_each_split(built):
    documents, _, shards, _ = built
    order = [
        doc_id
        for _, table in read_split(shards, "train")
        for doc_id in table.column("doc_id").to_pylist()
    ]
    order = list(dict.fromkeys(order))  # a document cut in two appears twice in a row
    assert order != sorted(order)


def test_same_seed_gives_byte_identical_shards_and_another_seed_reorders(built, tmp_path):
    _, data, shards, _ = built
    again = build_shards(data, tmp_path / "again", ShardConfig(**SMALL))
    reseeded = build_shards(data, tmp_path / "reseeded", ShardConfig(**SMALL, seed=7))
    original = read_manifest(shards)
    assert [o["sha256"] for o in again["outputs"]] == [o["sha256"] for o in original["outputs"]]
    assert tokens_by_document(tmp_path / "reseeded", "val") == tokens_by_document(shards, "val")
    first = lambda root: read_split(root, "train")[0][1].column("doc_id").to_pylist()  # noqa: E731
    assert first(tmp_path / "reseeded") != first(shards)
    assert reseeded["splits"] == original["splits"]


def test_adding_documents_never_moves_existing_ones_between_splits(built, tmp_path):
    documents, _, shards, _ = built
    grown = make_data_dir(tmp_path / "grown", documents + make_documents(200, start=300), files=2)
    build_shards(grown, tmp_path / "shards", ShardConfig(**SMALL))
    for split in ("train", "val"):
        before = set(tokens_by_document(shards, split))
        after = set(tokens_by_document(tmp_path / "shards", split))
        assert before <= after


def test_tokenizer_is_trained_on_the_train_split_only(tmp_path):
    documents = make_documents(60)
    val_doc = next(d for d in documents if is_validation_document(d["id"], 0.2))
    val_doc["text"] = "zyzzyva " * 400
    build_shards(make_data_dir(tmp_path / "data", documents), tmp_path / "shards", ShardConfig(**SMALL))
    tokenizer = load_tokenizer(tmp_path / "shards" / "tokenizer.json")
    assert len(tokenizer.encode(" zyzzyva").ids) > 2


def test_vocabularies_beyond_65536_tokens_are_stored_as_uint32(tmp_path):
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    tokenizer = train_tokenizer(
        [d["text"] for d in make_documents(50)], TokenizerConfig(vocab_size=300)
    )
    extra = [f"<extra_{i}>" for i in range(65_537 - tokenizer.get_vocab_size())]
    tokenizer.add_tokens(extra)
    tokenizer.save(str(tmp_path / "big.json"))
    documents = make_documents(40) + [
        {"id": "uses-extra", "text": f"x {extra[-1]} y", "lang": "en"}
    ]
    data = make_data_dir(tmp_path / "data", documents)
    manifest = build_shards(
        data, tmp_path / "shards", ShardConfig(**SMALL, tokenizer_path=str(tmp_path / "big.json"))
    )
    assert manifest["token_dtype"] == "uint32"
    assert manifest["tokenizer_sample"] is None  # reused, not trained
    assert manifest["tokenizer"]["sha256"] == sha256_file(tmp_path / "big.json")
    assert manifest["inputs"][1]["sha256"] == sha256_file(tmp_path / "big.json")
    _, table = read_split(tmp_path / "shards", "train")[0]
    assert table.schema.field("tokens").type == pa.list_(pa.uint32())
    extra_id = tokenizer.token_to_id(extra[-1])
    found = {
        **tokens_by_document(tmp_path / "shards", "train"),
        **tokens_by_document(tmp_path / "shards", "val"),
    }
    assert extra_id == 65_536 and extra_id in found["uses-extra"]
    verify_shards(tmp_path / "shards")


def test_empty_documents_are_skipped_and_counted(tmp_path):
    documents = make_documents(50) + [{"id": "empty", "text": "", "lang": "en"}]
    data = make_data_dir(tmp_path / "data", documents)
    manifest = build_shards(data, tmp_path / "shards", ShardConfig(**SMALL))
    assert manifest["counts"]["documents_skipped_empty"] == 1
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 50


def test_a_directory_without_manifest_is_refused_naming_it(tmp_path):
    (tmp_path / "raw" / "docs").mkdir(parents=True)
    with pytest.raises(ManifestError, match="raw has no manifest.json"):
        build_shards(tmp_path / "raw", tmp_path / "shards")
    assert not (tmp_path / "shards").exists()


def test_a_dataset_without_documents_is_refused_naming_the_docs_folder(tmp_path):
    with stage_output(tmp_path / "nofiles", "data_refresh", params={}):
        pass
    with pytest.raises(ShardError, match=r"nofiles/docs has no \*\.parquet"):
        build_shards(tmp_path / "nofiles", tmp_path / "shards")
    data = make_data_dir(tmp_path / "norows", [])
    with pytest.raises(ShardError, match="norows/docs holds no documents"):
        build_shards(data, tmp_path / "shards")


def test_a_split_left_empty_is_an_error_not_a_silent_gap(tmp_path):
    data = make_data_dir(tmp_path / "data", make_documents(3))
    with pytest.raises(ShardError, match="fell into the val split"):
        build_shards(data, tmp_path / "shards", ShardConfig(**{**SMALL, "val_fraction": 1e-9}))
    assert not (tmp_path / "shards").exists()


def test_verify_shards_accepts_a_fresh_build(built):
    *_, shards, manifest = built
    assert verify_shards(shards) == manifest


def test_verify_shards_names_a_corrupted_shard(built, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(built[2], copy)
    shard = copy / "train" / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the token buffer: the file still parses
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"train/shard-00001\.arrow is corrupt"):
        verify_shards(copy)


def test_verify_shards_names_a_tokenizer_that_does_not_match_the_shards(built, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(built[2], copy)
    other = train_tokenizer(
        [d["text"] for d in make_documents(50)], TokenizerConfig(vocab_size=290)
    )
    other.save(str(copy / "tokenizer.json"))
    with pytest.raises(ShardError, match=r"tokenizer\.json has 290 tokens"):
        verify_shards(copy)


def test_verify_shards_names_a_shard_written_for_another_vocabulary(built, tmp_path):
    _, data, shards, _ = built
    other = build_shards(data, tmp_path / "other", ShardConfig(**{**SMALL, "vocab_size": 300}))
    assert other["tokenizer"]["vocab_size"] != read_manifest(shards)["tokenizer"]["vocab_size"]
    copy = tmp_path / "mixed"
    shutil.copytree(shards, copy)
    shutil.copyfile(
        tmp_path / "other" / "val" / "shard-00000.arrow", copy / "val" / "shard-00000.arrow"
    )
    with pytest.raises(ShardError, match=r"val/shard-00000\.arrow was written for vocab_size=300"):
        verify_shards(copy)


def test_invalid_parameters_are_rejected_before_any_work(built, tmp_path):
    _, data, _, _ = built
    with pytest.raises(ValueError, match="val_fraction"):
        build_shards(data, tmp_path / "shards", ShardConfig(val_fraction=0))
    with pytest.raises(ValueError, match="shard_tokens"):
        build_shards(data, tmp_path / "shards", ShardConfig(shard_tokens=0))
    assert not (tmp_path / "shards").exists()


def test_language_weights_decide_which_language_the_vocabulary_is_learned_from(tmp_path):
    documents = make_documents(200)
    for doc in documents:
        doc["lang"] = "en"
    documents += [
        {"id": f"de-{i}", "lang": "de", "text": "Straßenbahnhaltestelle Fahrkartenautomat " * 8}
        for i in range(6)
    ]
    data = make_data_dir(tmp_path / "data", documents)
    word = " Straßenbahnhaltestelle"

    def tokens_of_word(**sampling):
        out = tmp_path / "-".join(f"{k}{v}" for k, v in sampling.items())
        manifest = build_shards(data, out, ShardConfig(**{**SMALL, "val_fraction": 0.05, **sampling}))
        return len(load_tokenizer(out / "tokenizer.json").encode(word).ids), manifest

    english_only, manifest = tokens_of_word(language_weights={"en": 1})
    german_only, _ = tokens_of_word(language_weights={"de": 1})
    assert manifest["tokenizer_sample"]["bytes_by_language"].get("de", 0) == 0
    assert german_only < english_only
    assert german_only <= 3


def test_the_tokenizer_sample_respects_its_byte_cap(built, tmp_path):
    _, data, _, full = built
    capped = build_shards(data, tmp_path / "capped", ShardConfig(**SMALL, sample_bytes=4000))
    sample, unrestricted = capped["tokenizer_sample"], full["tokenizer_sample"]
    expected = sum(
        rate * capped["splits"]["train"]["bytes_by_language"][lang]
        for lang, rate in sample["rates"].items()
    )
    assert expected == pytest.approx(4000, rel=1e-3)
    assert 2000 < sample["bytes"] < 6000 < unrestricted["bytes"]  # documents drawn at random


def test_the_shard_config_accepts_language_weights_from_the_command_line():
    config = ShardConfig(language_weights="en=2, de=0.5", tokenizer_path="tok.json")
    assert config.language_weights == {"en": 2.0, "de": 0.5}
    assert ShardConfig(language_weights={"ja": 1}).language_weights == {"ja": 1.0}
    with pytest.raises(ValueError, match="is not LANG=WEIGHT"):
        ShardConfig(language_weights="en")


def test_invalid_shard_settings_are_refused_naming_the_field():
    for field, value in [("vocab_size", 100), ("val_fraction", 1.0), ("seed", -1),
                         ("language_temperature", 0.0), ("language_weights", {"en": 0.0})]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"(?m)^{field}\b"):
            ShardConfig(**{field: value})


def test_read_ahead_yields_every_item_in_order_and_passes_errors_on():
    assert list(read_ahead(iter(range(7)), depth=3)) == list(range(7))

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(read_ahead(failing()))
