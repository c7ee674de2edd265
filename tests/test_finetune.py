"""Fine-tuning from a pretrained checkpoint: data formats and masks, the classifier, SFT with and
without LoRA, and the Prefect flows' MLflow lineage and registry entries."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from lmforge.manifest import build_manifest, read_manifest, verify_outputs, write_manifest
from lmforge.model.checkpoint import load_model, save_model
from lmforge.model.classifier import SequenceClassifier, load_classifier
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tasks.finetune.classify import (
    ClassifierConfig,
    classification_metrics,
    finetune_classifier,
    stratified_split,
    url_section,
)
from lmforge.tasks.finetune.data import (
    IGNORE_INDEX,
    FinetuneDataError,
    LabelledText,
    load_instruction_records,
    load_labelled_texts,
    pack_examples,
    render_record,
    tokenize_example,
)
from lmforge.tasks.finetune.instruct import InstructConfig, finetune_instruct
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
TOOLS = ["hammer", "wrench", "drill", "saw", "chisel", "pliers", "ruler", "level"]


def sentence(words: list[str], rng: random.Random) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(5, 10)))


def instruction_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        word = rng.choice(FRUITS + TOOLS)
        records.append(
            {"instruction": f"Repeat the word {word} twice.", "output": f"{word} {word}"}
        )
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A random-init GPT saved as a finished training output, with a tokenizer trained here."""
    root = tmp_path_factory.mktemp("base")
    rng = random.Random(0)
    corpus = [sentence(FRUITS + TOOLS, rng) for _ in range(200)]
    corpus += [r["instruction"] + " " + r["output"] for r in instruction_records(50)]
    corpus += ["### Instruction:\n### Input:\n### Response:\n### System:\n"] * 20
    tokenizer = train_tokenizer(corpus, TokenizerConfig(vocab_size=400, min_frequency=2))
    out = root / "train"
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2, d_model=32, max_seq_len=48
    )
    save_model(GPT(config), out)
    tokenizer.save(str(out / "tokenizer.json"))
    write_manifest(out, build_manifest(out, "pretrain", params={}, inputs=[], counts={}))
    return out


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory) -> Path:
    """60 texts: 36 about fruit, 24 about tools (the majority baseline scores 0.6)."""
    path = tmp_path_factory.mktemp("cls") / "labelled.csv"
    rng = random.Random(1)
    rows = [(sentence(FRUITS, rng), "fruit") for _ in range(36)]
    rows += [(sentence(TOOLS, rng), "tool") for _ in range(24)]
    rng.shuffle(rows)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


# --- data -----------------------------------------------------------------------------------------


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n\n{"text": broken}\n')
    with pytest.raises(FinetuneDataError, match=r"bad\.jsonl:3: not valid JSON"):
        load_labelled_texts(path)


def test_a_record_without_a_label_names_the_field_and_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\nhello,a\nworld,\n")
    with pytest.raises(FinetuneDataError, match=r"data\.csv:3: missing or empty field 'label'"):
        load_labelled_texts(path)


def test_unknown_instruction_format_is_explained(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(FinetuneDataError, match=r"x\.jsonl:1: .*'instruction' and 'output'"):
        load_instruction_records(path)


def test_chat_and_alpaca_records_render_to_the_same_prompt_template():
    alpaca = render_record({"instruction": "Say hi.", "input": "", "output": "hi"})
    chat = render_record(
        {
            "messages": [
                {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "hi"},
            ]
        }
    )
    assert alpaca == chat
    assert alpaca[0].text == "### Instruction:\nSay hi.\n\n### Response:\n"
    with_input = render_record({"instruction": "Add.", "input": "2 3", "output": "5"})
    assert with_input[0].text == "### Instruction:\nAdd.\n\n### Input:\n2 3\n\n### Response:\n"


def test_loss_is_masked_to_response_tokens_and_the_closing_endoftext(base_model):
    tokenizer = load_tokenizer(base_model / "tokenizer.json")
    segments = render_record({"instruction": "Repeat the word plum twice.", "output": "plum plum"})
    example = tokenize_example(tokenizer, segments, max_tokens=48)
    prompt_ids = tokenizer.encode(segments[0].text).ids
    response_ids = tokenizer.encode("plum plum").ids + [0]
    assert example.input_ids == (prompt_ids + response_ids)[:-1]
    assert example.labels == [IGNORE_INDEX] * (len(prompt_ids) - 1) + response_ids
    assert tokenize_example(tokenizer, segments, max_tokens=len(prompt_ids) - 1) is None


def test_packing_fills_rows_without_splitting_examples(base_model):
    tokenizer = load_tokenizer(base_model / "tokenizer.json")
    examples = [tokenize_example(tokenizer, render_record(r), 48) for r in instruction_records(12)]
    rows = pack_examples(examples, seq_len=48)
    assert len(rows) < len(examples)
    assert all(len(row.input_ids) <= 48 for row in rows)

    def flat(items, field):
        return [token for item in items for token in getattr(item, field)]

    assert flat(rows, "input_ids") == flat(examples, "input_ids")
    assert flat(rows, "labels") == flat(examples, "labels")


# --- classification -------------------------------------------------------------------------------


def test_url_section_is_the_directory_of_the_page():
    assert url_section("https://docs.example.org/3/library/io.html") == "library"
    assert url_section("http://www.pyref-archiv.example.de/doku/reference/for.html") == "reference"
    assert url_section("https://example.org/index.html") is None


def test_stratified_split_holds_out_every_class():
    examples = [LabelledText(f"t{i}", "a") for i in range(10)] + [LabelledText("u", "b")] * 2
    train, val = stratified_split(examples, 0.2, seed=0)
    assert {e.label for e in val} == {"a", "b"} and {e.label for e in train} == {"a", "b"}
    assert len(train) + len(val) == 12


def test_metrics_count_the_confusion_matrix_and_average_f1_over_classes():
    accuracy, macro_f1, confusion, f1 = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert confusion == [[1, 1], [0, 2]]
    assert accuracy == 0.75
    assert f1 == pytest.approx([2 / 3, 0.8]) and macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)


def test_classifier_reads_the_last_real_token_so_padding_changes_nothing(base_model):
    classifier = SequenceClassifier(load_model(base_model), num_classes=3, pad_id=1)
    row = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, 1, 1, 1]])
    torch.testing.assert_close(classifier(row), classifier(padded))


def test_freezing_leaves_only_the_last_blocks_the_norm_and_the_head(base_model):
    classifier = SequenceClassifier(load_model(base_model), num_classes=2, pad_id=1)
    classifier.freeze_all_but_last(1)
    trainable = {
        n.split(".")[0] if n.startswith("head") else n.rsplit(".", 1)[0]
        for n, p in classifier.named_parameters()
        if p.requires_grad
    }
    assert "base.blocks.0.attn.qkv" not in trainable and "base.tok_emb" not in trainable
    assert {"head", "base.norm", "base.blocks.1.attn.qkv"} <= trainable


def test_classifier_beats_the_majority_baseline_on_a_separable_task(
    base_model, labelled_csv, tmp_path
):
    out = tmp_path / "classifier"
    config = ClassifierConfig(max_len=16, epochs=6, batch_size=8, lr=3e-3, device="cpu")
    result = finetune_classifier(base_model, labelled_csv, out, config)
    assert result.majority_accuracy == pytest.approx(0.6, abs=0.05)
    assert result.accuracy > result.majority_accuracy + 0.2
    assert result.macro_f1 > 0.7
    assert read_manifest(out)["stage"] == "finetune_classifier"
    verify_outputs(out)
    assert (out / "confusion_matrix.png").stat().st_size > 0
    classifier, labels = load_classifier(out)
    assert labels == ["fruit", "tool"]
    tokenizer = load_tokenizer(out / "tokenizer.json")
    ids = tokenizer.encode("hammer saw drill wrench pliers").ids + [0]
    assert labels[int(classifier(torch.tensor([ids])).argmax())] == "tool"


# --- instruction tuning ---------------------------------------------------------------------------


def test_sft_lowers_the_response_token_loss(base_model, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", instruction_records(40))
    config = InstructConfig(
        epochs=10,
        batch_size=4,
        lr=1e-2,
        val_fraction=0.2,
        num_samples=2,
        max_new_tokens=6,
        device="cpu",
    )
    result = finetune_instruct(base_model, data, tmp_path / "sft", config)
    assert result.val_loss_after < 0.7 * result.val_loss_before
    assert result.trainable_parameters == result.total_parameters
    assert result.train_rows < result.train_examples  # packed
    assert len(result.samples) == 2 and all(
        "Repeat the word" in s["prompt"] for s in result.samples
    )
    verify_outputs(tmp_path / "sft")
    load_model(tmp_path / "sft")


def test_lora_sft_trains_only_adapters_and_saves_a_merged_model(base_model, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", instruction_records(40))
    out = tmp_path / "lora"
    config = InstructConfig(
        epochs=4,
        batch_size=4,
        lr=1e-2,
        lora_rank=4,
        val_fraction=0.2,
        num_samples=1,
        max_new_tokens=4,
        device="cpu",
    )
    result = finetune_instruct(base_model, data, out, config)
    assert result.val_loss_after < result.val_loss_before
    assert result.trainable_parameters == 2 * 4 * (32 + 96) + 2 * 4 * (32 + 32)  # qkv, out_proj
    base, tuned = load_model(base_model), load_model(out)
    assert torch.equal(base.tok_emb.weight, tuned.tok_emb.weight)
    assert torch.equal(base.blocks[0].mlp.down.weight, tuned.blocks[0].mlp.down.weight)
    assert not torch.equal(base.blocks[0].attn.qkv.weight, tuned.blocks[0].attn.qkv.weight)
    assert (out / "lora_adapter.safetensors").is_file()
    assert json.loads((out / "lora.json").read_text())["rank"] == 4


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "values", "named"),
    [
        (ClassifierConfig, {"epochs": 0}, "epochs"),
        (ClassifierConfig, {"max_len": 1}, "max_len"),
        (ClassifierConfig, {"val_fraction": 1.0}, "val_fraction"),
        (ClassifierConfig, {"min_class_examples": 1}, "min_class_examples"),
        (ClassifierConfig, {"label_from": "path"}, "label_from"),
        (ClassifierConfig, {"warmup_fraction": 1.0}, "warmup_fraction"),
        (InstructConfig, {"max_len": 4}, "max_len"),
        (InstructConfig, {"lr": 0.0}, "lr"),
        (InstructConfig, {"lora_rank": -1}, "lora_rank"),
        (InstructConfig, {"lora_dropout": 1.0}, "lora_dropout"),
        (InstructConfig, {"lora_targets": []}, "lora_targets"),
        (InstructConfig, {"base_model": "work/train"}, "base_model"),  # a path goes in `run`
    ],
)
def test_finetune_configs_refuse_invalid_values_naming_the_field(config, values, named):
    with pytest.raises(ValueError, match=named):
        config(**values)


# --- flows: lineage and registry ------------------------------------------------------------------


@pytest.mark.slow
def test_flows_log_child_runs_of_the_base_model_and_register_their_models(
    prefect_api, base_model, labelled_csv, tmp_path, monkeypatch
):
    import mlflow
    from mlflow.tracking import MlflowClient

    from lmforge.flows import tracking
    from lmforge.flows.finetune import finetune_classifier as classifier_flow
    from lmforge.flows.finetune import finetune_instruct as instruct_flow
    from lmforge.flows.params import FinetuneClassifierRun, FinetuneInstructRun
    from lmforge.manifest import manifest_digest

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(tracking, "_configured_uri", None)
    tracking.configure_tracking(tmp_path)
    with tracking.stage_run("pretrain", {}) as pretrain_run:  # what the pretrain flow records
        tracking.log_stage_manifest(base_model, context="training")
    base_run_id = pretrain_run.info.run_id

    summary = classifier_flow(
        finetune=ClassifierConfig(max_len=16, epochs=2, batch_size=8, lr=3e-3, device="cpu"),
        run=FinetuneClassifierRun(
            base_model=str(base_model), data=str(labelled_csv), out=str(tmp_path / "cls"),
            registered_model_name="test-classifier",
        ),
    )  # fmt: skip
    data = write_jsonl(tmp_path / "sft.jsonl", instruction_records(12))
    instruct_summary = instruct_flow(
        finetune=InstructConfig(
            epochs=1, lora_rank=2, num_samples=1, max_new_tokens=4, device="cpu"
        ),
        run=FinetuneInstructRun(
            base_model=str(base_model), data=str(data), out=str(tmp_path / "sft"),
            registered_model_name="test-instruct",
        ),
    )  # fmt: skip

    client = MlflowClient()
    for result, name in ((summary, "test-classifier"), (instruct_summary, "test-instruct")):
        run = client.get_run(result["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == base_run_id
        assert run.data.tags["lmforge.base_model"] == str(base_model.resolve())
        assert run.data.tags["lmforge.base_model_digest"] == manifest_digest(base_model)
        [version] = client.search_model_versions(f"name = '{name}'")
        assert version.run_id == run.info.run_id
    run = client.get_run(summary["mlflow_run_id"])
    assert {"accuracy", "macro_f1", "majority_accuracy"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(instruct_summary["mlflow_run_id"])}
    assert "samples.json" in artifacts
    classifier = mlflow.pytorch.load_model("models:/test-classifier/1")
    logits = classifier(torch.ones((3, 16), dtype=torch.long))
    assert logits.shape == (3, 2)
