import math

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT, KVCache, sample_next_token

VOCAB = 97


def tiny_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=VOCAB, n_layer=2, n_head=4, d_model=32, max_seq_len=32)
    return ModelConfig(**{**values, **overrides})


def make_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config(**overrides)).eval()


VARIANTS = {
    "default": {},
    "grouped_query": {"n_kv_head": 2},
    "multi_query": {"n_kv_head": 1},
    "qk_norm": {"qk_norm": True},
    "layernorm_gelu_learned_untied": {
        "norm": "layernorm", "mlp": "gelu", "position": "learned", "tie_embeddings": False
    },
}


def greedy_without_cache(model: GPT, idx: torch.Tensor, steps: int) -> torch.Tensor:
    """Reference decoding: re-run the whole (cropped) context for every token."""
    for _ in range(steps):
        logits = model(idx[:, -model.config.max_seq_len :])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


# --- config -----------------------------------------------------------------------------------


def test_config_rejects_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match="d_model=30 is not divisible by n_head=4"):
        tiny_config(d_model=30)


def test_config_rejects_query_heads_not_divisible_by_kv_heads():
    with pytest.raises(ValueError, match="n_head=4 is not divisible by n_kv_head=3"):
        tiny_config(n_kv_head=3)


def test_config_rejects_unknown_choices_and_non_positive_sizes():
    with pytest.raises(ValueError, match="norm must be one of rmsnorm, layernorm"):
        tiny_config(norm="batchnorm")
    with pytest.raises(ValueError, match="n_layer must be a positive integer"):
        tiny_config(n_layer=0)
    with pytest.raises(ValueError, match="head_dim=5 .* must be even for RoPE"):
        tiny_config(d_model=20, n_head=4)


def test_config_round_trips_through_dict_and_rejects_unknown_keys():
    config = tiny_config(n_kv_head=2, qk_norm=True)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**config.to_dict(), "n_embd": 64})


def test_preset_defaults_are_rope_rmsnorm_swiglu_with_tied_head():
    config = ModelConfig.preset("tiny", vocab_size=8192)
    assert (config.position, config.norm, config.mlp, config.tie_embeddings) == (
        "rope", "rmsnorm", "swiglu", True
    )
    assert config.n_kv_head == config.n_head
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ModelConfig.preset("huge", vocab_size=8192)


def test_preset_overrides_replace_fields_and_head_count_resets_kv_heads():
    config = ModelConfig.preset("1b", vocab_size=1000, n_head=8)
    assert config.n_head == 8 and config.n_kv_head == 8
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.preset("tiny", vocab_size=1000, layers=3)


@pytest.mark.parametrize(
    ("preset", "expected_millions"), [("small", 124), ("medium", 355), ("1b", 1030)]
)
def test_preset_parameter_counts_match_their_names_at_gpt2_vocab(preset, expected_millions):
    with torch.device("meta"):  # count without allocating
        model = GPT(ModelConfig.preset(preset, vocab_size=50257))
    assert model.num_parameters() / 1e6 == pytest.approx(expected_millions, rel=0.01)


# --- forward ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_returns_logits_for_every_position(variant):
    model = make_model(**VARIANTS[variant])
    logits = model(torch.randint(0, VOCAB, (3, 11)))
    assert logits.shape == (3, 11, VOCAB)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_future_tokens_do_not_change_past_logits(variant):
    model = make_model(**VARIANTS[variant])
    idx = torch.randint(0, VOCAB, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_forward_rejects_sequences_longer_than_max_seq_len():
    with pytest.raises(ValueError, match="exceeds max_seq_len=32"):
        make_model()(torch.zeros(1, 33, dtype=torch.long))


def test_tied_head_shares_the_embedding_matrix_and_counts_it_once():
    tied, untied = make_model(), make_model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * 32


def test_residual_projections_start_smaller_than_other_weights():
    model = GPT(tiny_config(n_layer=8, d_model=64))
    block = model.blocks[0]
    assert block.attn.out_proj.weight.std() < 0.5 * block.attn.qkv.weight.std()
    assert block.mlp.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)


def test_untrained_model_predicts_close_to_uniform():
    logits = make_model()(torch.randint(0, VOCAB, (4, 32)))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.randint(0, VOCAB, (128,)))
    assert loss.item() == pytest.approx(math.log(VOCAB), abs=0.2)


def test_flops_per_token_is_six_n_plus_attention_term():
    model = make_model()
    n, d, layers = model.num_parameters(), 32, 2
    assert model.flops_per_token(32) == 6 * n + 12 * layers * d * 32
    learned = make_model(position="learned", tie_embeddings=False)
    matmul_params = learned.num_parameters() - 32 * 32 - VOCAB * 32  # minus both lookup tables
    assert learned.flops_per_token(8) == 6 * matmul_params + 12 * layers * d * 8


# --- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generation_with_kv_cache_equals_recomputing_without_it(variant):
    model = make_model(**VARIANTS[variant])
    prompt = torch.randint(0, VOCAB, (2, 5))
    cached = model.generate(prompt, max_new_tokens=20, temperature=0)
    assert torch.equal(cached, greedy_without_cache(model, prompt, 20))


@pytest.mark.parametrize("variant", VARIANTS)
def test_feeding_a_sequence_in_chunks_through_the_kv_cache_equals_one_forward_pass(variant):
    model = make_model(**VARIANTS[variant])
    idx = torch.randint(0, VOCAB, (2, 20))
    cache = KVCache(model.config.n_layer, max_len=20)
    with torch.no_grad():
        whole = model(idx)
        chunks = [model(idx[:, a:b], kv_cache=cache) for a, b in ((0, 7), (7, 8), (8, 20))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, rtol=1e-4, atol=1e-5)
    assert cache.length == 20


def test_generation_past_max_seq_len_slides_the_context_like_a_cacheless_model():
    model = make_model()
    prompt = torch.randint(0, VOCAB, (1, 30))
    cached = model.generate(prompt, max_new_tokens=10, temperature=0)
    assert cached.shape == (1, 40)
    assert torch.equal(cached, greedy_without_cache(model, prompt, 10))


def expected_with_eos(free: torch.Tensor, prompt_len: int, eos_id: int) -> torch.Tensor:
    """What eos-aware decoding must return, given the greedy continuation `free` without eos."""
    firsts = []
    for row in free:
        hits = (row[prompt_len:] == eos_id).nonzero()
        firsts.append(int(hits[0]) if len(hits) else None)
    length = free.shape[1] if None in firsts else prompt_len + max(firsts) + 1
    expected = free[:, :length].clone()
    for row, first in enumerate(firsts):
        if first is not None:
            expected[row, prompt_len + first :] = eos_id
    return expected


def test_generation_stops_at_eos():
    model = make_model()
    prompt = torch.randint(0, VOCAB, (1, 4))
    free = model.generate(prompt, max_new_tokens=12, temperature=0)
    eos_id = int(free[0, 6])  # the third generated token
    stopped = model.generate(prompt, max_new_tokens=12, temperature=0, eos_id=eos_id)
    assert stopped.shape[1] <= 7
    assert torch.equal(stopped, expected_with_eos(free, 4, eos_id))


def test_finished_sequences_repeat_eos_while_others_continue():
    model = make_model()
    prompt = torch.randint(0, VOCAB, (2, 4))
    free = model.generate(prompt, max_new_tokens=12, temperature=0)
    eos_id = int(free[0, 5])
    stopped = model.generate(prompt, max_new_tokens=12, temperature=0, eos_id=eos_id)
    assert torch.equal(stopped, expected_with_eos(free, 4, eos_id))


def test_next_tokens_are_yielded_one_forward_pass_at_a_time():
    model = make_model()
    forward_passes = []
    model.register_forward_hook(lambda *args: forward_passes.append(1))
    steps = model.iter_next_tokens(torch.randint(0, VOCAB, (2, 5)), 10, temperature=0)
    first = next(steps)
    assert first.shape == (2,) and len(forward_passes) == 1
    assert len(list(steps)) == 9 and len(forward_passes) == 10


def test_top_k_one_and_tiny_top_p_sample_the_greedy_token():
    torch.manual_seed(0)
    logits = torch.randn(8, VOCAB)
    greedy = logits.argmax(-1)
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(sample_next_token(logits, 1.0, top_k=1, generator=generator), greedy)
    assert torch.equal(sample_next_token(logits, 1.0, top_p=1e-6, generator=generator), greedy)


def test_top_p_never_samples_outside_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    samples = sample_next_token(logits, 1.0, top_p=0.75, generator=torch.Generator().manual_seed(0))
    assert set(samples.tolist()) == {0, 1}


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = make_model()
    prompt = torch.randint(0, VOCAB, (2, 3))
    runs = [
        model.generate(
            prompt, 15, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(7)
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_generate_rejects_invalid_sampling_settings():
    model = make_model()
    prompt = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 3, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 3, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 3, top_k=0)
