import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from lmforge.model.data import (
    TokenDataError,
    TrainBatches,
    open_token_split,
    sequential_windows,
    shards_vocab_size,
)
from lmforge.model.shard_format import shard_schema
from shard_fixtures import write_rows, write_shards_dir, write_split

VOCAB = 1000


def random_documents(count: int, seed: int = 0, max_len: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB, rng.integers(1, max_len)).tolist() for _ in range(count)]


@pytest.fixture
def split_with_stream(tmp_path):
    """A split of 3 shards of 100 tokens plus a shorter last one, and its expected tokens."""
    documents = random_documents(18, max_len=30)
    stream = write_split(tmp_path / "train", documents, VOCAB, eot_id=0, shard_tokens=100)
    return open_token_split(tmp_path / "train"), np.array(stream)


def test_split_concatenates_shards_in_order_and_reads_metadata(split_with_stream):
    split, stream = split_with_stream
    assert len(split.paths) == int(np.ceil(len(stream) / 100)) >= 3
    assert split.num_tokens == len(stream)
    assert (split.vocab_size, split.eot_id) == (VOCAB, 0)
    assert np.array_equal(split.window(0, split.num_tokens), stream)


def test_window_inside_one_shard_is_a_view_of_the_memory_map(split_with_stream):
    split, stream = split_with_stream
    window = split.window(10, 50)
    assert np.array_equal(window, stream[10:60])
    assert np.shares_memory(window, split.shards[0])
    assert not window.flags.writeable


def test_window_across_shard_boundaries_is_copied_in_order(split_with_stream):
    split, stream = split_with_stream
    window = split.window(95, 120)  # shard 0's tail, all of shard 1, shard 2's head
    assert np.array_equal(window, stream[95:215])


def test_window_outside_the_split_raises(split_with_stream):
    split, _ = split_with_stream
    with pytest.raises(IndexError, match="outside the split"):
        split.window(split.num_tokens - 5, 10)


def test_uint32_tokens_are_read_for_large_vocabularies(tmp_path):
    stream = write_split(tmp_path / "val", [[70_000, 3, 99_999]], vocab_size=100_000, eot_id=5)
    split = open_token_split(tmp_path / "val")
    assert split.window(0, 4).tolist() == stream == [70_000, 3, 99_999, 5]


def test_empty_split_directory_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(TokenDataError, match="holds no shard-\\*.arrow files"):
        open_token_split(tmp_path / "train")
    with pytest.raises(TokenDataError, match="is not a directory"):
        open_token_split(tmp_path / "missing")


def test_shard_with_another_schema_is_rejected(tmp_path):
    split_dir = tmp_path / "train"
    split_dir.mkdir()
    schema = pa.schema([("doc_id", pa.string()), ("tokens", pa.list_(pa.int64()))],
                       metadata={"lmforge.vocab_size": "10", "lmforge.eot_id": "0"})
    write_rows(split_dir / "shard-00000.arrow", [("a", [1, 2, 3])], schema)
    with pytest.raises(TokenDataError, match="tokens: list<item: int64>.*needs"):
        open_token_split(split_dir)


def test_shard_without_vocabulary_metadata_is_rejected(tmp_path):
    split_dir = tmp_path / "train"
    split_dir.mkdir()
    schema = shard_schema(VOCAB, 0).remove_metadata()
    write_rows(split_dir / "shard-00000.arrow", [("a", [1, 2, 0])], schema)
    with pytest.raises(TokenDataError, match="lacks integer schema metadata lmforge.vocab_size"):
        open_token_split(split_dir)


def test_file_that_is_not_arrow_is_rejected(tmp_path):
    split_dir = tmp_path / "train"
    split_dir.mkdir()
    (split_dir / "shard-00000.arrow").write_text("not arrow")
    with pytest.raises(TokenDataError, match="is not an Arrow IPC file"):
        open_token_split(split_dir)


def test_shards_from_different_tokenizers_are_rejected(tmp_path):
    split_dir = tmp_path / "train"
    split_dir.mkdir()
    write_rows(split_dir / "shard-00000.arrow", [("a", [1, 0])], shard_schema(100, 0))
    write_rows(split_dir / "shard-00001.arrow", [("b", [1, 0])], shard_schema(200, 0))
    with pytest.raises(TokenDataError, match="disagree on vocab_size"):
        open_token_split(split_dir)


def test_vocab_size_comes_from_the_manifest_then_from_shard_metadata(tmp_path):
    with_manifest = write_shards_dir(tmp_path / "a", [[1, 2]], [[3]], vocab_size=VOCAB)
    split = open_token_split(with_manifest / "train")
    split.vocab_size = -1  # prove the manifest, not the shard, answered
    assert shards_vocab_size(with_manifest, split) == VOCAB
    without = write_shards_dir(
        tmp_path / "b", [[1, 2]], [[3]], vocab_size=777, manifest_vocab_size=False
    )
    assert shards_vocab_size(without, open_token_split(without / "train")) == 777


def test_sequential_windows_score_every_target_token_exactly_once(split_with_stream):
    split, stream = split_with_stream
    windows = list(sequential_windows(split, seq_len=16))
    assert len(windows) == (len(stream) - 1) // 16
    assert all(len(w) == 17 for w in windows)
    targets = np.concatenate([w[1:] for w in windows])
    assert np.array_equal(targets, stream[1 : 1 + len(targets)])
    capped = list(sequential_windows(split, seq_len=16, max_tokens=40))
    assert len(capped) == 2


def test_split_shorter_than_one_window_is_a_clear_error(tmp_path):
    write_split(tmp_path / "val", [[5, 6, 7]], VOCAB)  # 4 tokens with the eot
    split = open_token_split(tmp_path / "val")
    with pytest.raises(ValueError, match="4 tokens, fewer than one window of 9"):
        sequential_windows(split, seq_len=8)
    with pytest.raises(ValueError, match="fewer than one window of seq_len \\+ 1 = 9"):
        TrainBatches(split, batch_size=2, seq_len=8, seed=0)


def test_batches_are_targets_shifted_by_one_token(split_with_stream):
    split, stream = split_with_stream
    batches = TrainBatches(split, batch_size=4, seq_len=8, seed=0)
    x, y = batches.batch(0)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row, index in zip(x, batches.window_indices(0)):
        assert row.tolist() == stream[index * 8 : index * 8 + 8].tolist()


def test_batch_order_is_a_pure_function_of_seed_and_step(split_with_stream):
    split, _ = split_with_stream
    first, second = (TrainBatches(split, 4, 8, seed=3) for _ in range(2))
    later_steps = [second.batch(s) for s in (7, 2, 0)]  # any order, fresh object
    for (x, y), step in zip(later_steps, (7, 2, 0)):
        assert torch.equal(first.batch(step)[0], x) and torch.equal(first.batch(step)[1], y)
    other_seed = TrainBatches(split, 4, 8, seed=4)
    assert not torch.equal(other_seed.batch(0)[0], first.batch(0)[0])


def test_each_epoch_visits_every_window_once(split_with_stream):
    split, _ = split_with_stream
    batches = TrainBatches(split, batch_size=5, seq_len=8, seed=0)
    n = batches.num_windows
    stream = np.concatenate([batches.window_indices(s) for s in range(3 * n // 5 + 1)])
    for epoch in range(3):
        assert sorted(stream[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n : 2 * n])  # a new permutation per epoch


def test_ranks_take_disjoint_slices_of_the_global_batch(split_with_stream):
    split, _ = split_with_stream
    single = TrainBatches(split, batch_size=6, seq_len=8, seed=1)
    ranks = [TrainBatches(split, 2, 8, seed=1, rank=r, world_size=3) for r in range(3)]
    for step in range(5):
        per_rank = [r.window_indices(step) for r in ranks]
        assert np.array_equal(np.concatenate(per_rank), single.window_indices(step))
        if step * 6 // single.num_windows == (step * 6 + 5) // single.num_windows:  # one epoch
            assert len(set(np.concatenate(per_rank).tolist())) == 6


def test_loader_state_accepts_the_same_order_and_names_what_changed(split_with_stream):
    split, _ = split_with_stream
    batches = TrainBatches(split, 4, 8, seed=0)
    state = batches.state_dict()
    TrainBatches(split, 2, 8, seed=0, rank=1, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="seed: saved 0, now 9"):
        TrainBatches(split, 4, 8, seed=9).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch_size: saved 4, now 8"):
        TrainBatches(split, 8, 8, seed=0).load_state_dict(state)


def test_invalid_rank_is_rejected(split_with_stream):
    split, _ = split_with_stream
    with pytest.raises(ValueError, match="rank must lie in \\[0, world_size=2\\)"):
        TrainBatches(split, 4, 8, seed=0, rank=2, world_size=2)


def test_windows_are_the_batch_before_the_shift(split_with_stream):
    split, stream = split_with_stream
    batches = TrainBatches(split, batch_size=3, seq_len=8, seed=2)
    windows = batches.windows(4)
    assert windows.shape == (3, 9) and windows.dtype == np.int64
    x, y = batches.batch(4)
    assert torch.equal(x, torch.from_numpy(windows[:, :-1]))
    assert torch.equal(y, torch.from_numpy(windows[:, 1:]))
    for row, index in zip(windows, batches.window_indices(4)):
        assert row.tolist() == stream[index * 8 : index * 8 + 9].tolist()


def test_batch_order_is_the_seeded_permutation_of_each_epoch_laid_end_to_end(split_with_stream):
    # Pins the order itself, so that checkpoints written by earlier versions resume identically.
    split, _ = split_with_stream
    batches = TrainBatches(split, batch_size=4, seq_len=8, seed=5, rank=1, world_size=2)
    n = batches.num_windows
    for step in (0, 3, n // 8, 2 * n // 8 + 1):
        positions = np.arange(step * 8 + 4, step * 8 + 8)
        expected = [np.random.default_rng([5, p // n]).permutation(n)[p % n] for p in positions]
        assert batches.window_indices(step).tolist() == expected


@pytest.fixture
def shards_dir(tmp_path):
    return write_shards_dir(
        tmp_path / "shards", random_documents(30), random_documents(5, seed=1), VOCAB,
        shard_tokens=100,
    )


def test_a_shard_whose_digest_does_not_match_the_manifest_is_named(shards_dir):
    shard = shards_dir / "train" / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, the file still parses
    shard.write_bytes(bytes(data))
    with pytest.raises(TokenDataError, match=r"train/shard-00001\.arrow is corrupt: its sha256"):
        open_token_split(shards_dir / "train")
    open_token_split(shards_dir / "train", verify=False)  # opted out: sizes still match


def test_a_truncated_missing_or_foreign_shard_is_named_without_hashing(shards_dir):
    shard = shards_dir / "train" / "shard-00002.arrow"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(TokenDataError, match=r"shard-00002\.arrow is corrupt: it has \d+ bytes"):
        open_token_split(shards_dir / "train", verify=False)
    shard.unlink()
    with pytest.raises(TokenDataError, match=r"shard-00002\.arrow is listed in .* but missing"):
        open_token_split(shards_dir / "train", verify=False)
    write_split(shards_dir / "other", [[5, 6]], VOCAB)
    (shards_dir / "other" / "shard-00000.arrow").rename(shards_dir / "val" / "shard-00099.arrow")
    with pytest.raises(TokenDataError, match=r"val/shard-00099\.arrow is not listed in"):
        open_token_split(shards_dir / "val", verify=False)


def test_a_replaced_tokenizer_is_named(shards_dir):
    (shards_dir / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenDataError, match=r"tokenizer\.json is not the tokenizer the shards"):
        open_token_split(shards_dir / "val")


def test_shards_written_for_another_vocabulary_than_the_manifest_records_are_refused(tmp_path):
    shards = write_shards_dir(tmp_path / "shards", [[1, 2]], [[3]], vocab_size=VOCAB)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["tokenizer"]["vocab_size"] = 500
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TokenDataError, match=r"written for vocab_size=1000 .* 500 tokens"):
        open_token_split(shards / "train")


def test_a_token_outside_the_vocabulary_is_caught_before_training_and_names_the_shard(tmp_path):
    split_dir = tmp_path / "train"
    split_dir.mkdir()
    schema = shard_schema(50, 0)
    write_rows(split_dir / "shard-00000.arrow", [("a", [1, 2, 3, 4, 0])], schema)
    write_rows(split_dir / "shard-00001.arrow", [("b", [5, 6, 60_000, 7, 0])], schema)
    batches = TrainBatches(open_token_split(split_dir), batch_size=9, seq_len=1, seed=0)
    with pytest.raises(TokenDataError, match=r"shard-00001\.arrow holds token id 60000"):
        batches.batch(0)
