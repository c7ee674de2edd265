"""Recipes: every config field is a dotted flag and a key of a YAML recipe; flags override the
recipe, the recipe overrides the defaults; bad values and unknown keys are refused by name; the
resolved config a run records is a recipe that repeats it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass as config_dataclass

from lmforge import __version__
from lmforge.recipes import (
    README_END,
    README_START,
    ConfigError,
    ConfigHelpFormatter,
    add_config_flags,
    call_with_sections,
    config_reference_markdown,
    dump_config,
    flow_sections,
    load_recipe,
    log_config,
    read_config_file,
    replace_readme_block,
    resolve_sections,
)

REPO = Path(__file__).resolve().parents[1]


class QualityFilter(BaseModel):
    """Drops documents too short to be prose."""

    model_config = ConfigDict(extra="forbid")
    min_words: int = Field(50, ge=1, description="Fewest words a kept document has.")
    max_symbol_ratio: float = Field(0.1, gt=0.0, le=1.0, description="Most symbols per word.")


class DataSection(BaseModel):
    """Which documents are kept."""

    model_config = ConfigDict(extra="forbid")
    languages: list[str] | None = Field(None, description="Languages to keep.")
    dedup: bool = Field(True, description="Remove near duplicates.")
    extractor: Literal["fast", "careful"] = Field("fast", description="HTML extractor.")
    min_scores: dict[str, float] | None = Field(None, description="LANG=SCORE minimums.")
    quality: QualityFilter | None = Field(QualityFilter(), description="None turns it off.")

    @field_validator("min_scores", mode="before")
    @classmethod
    def _parse_scores(cls, value: object) -> object:
        if isinstance(value, str):  # the flag's `en=0.5,de=0.7`
            return dict(entry.split("=") for entry in value.split(","))
        return value


class TrainSection(BaseModel):
    """How the model is trained."""

    model_config = ConfigDict(extra="forbid")
    lr: float = Field(3e-4, gt=0.0, description="Peak learning rate.")
    max_steps: int = Field(100, ge=1, description="Optimizer steps.")


class RunSection(BaseModel):
    """Where the stage reads and writes."""

    model_config = ConfigDict(extra="forbid")
    out: str = Field("work/train", description="Output folder.")
    resume: bool = Field(False, description="Continue the run in `out`.")


SECTIONS = {"data": DataSection, "train": TrainSection, "run": RunSection}


def parser_for(sections=SECTIONS, flat=("run", "train")) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy", formatter_class=ConfigHelpFormatter)
    add_config_flags(parser, sections, flat=flat)
    return parser


def resolve(argv: list[str], recipe: dict | None = None, **options):
    return resolve_sections(parser_for().parse_args(argv), SECTIONS, recipe, **options)


# --- flags -------------------------------------------------------------------------------------


def test_every_leaf_field_is_a_dotted_flag_and_kebab_case_is_accepted():
    configs = resolve(["--data.quality.min_words", "40", "--train.max-steps", "7",
                       "--data.quality.max-symbol-ratio", "0.2"])  # fmt: skip
    assert configs["data"].quality == QualityFilter(min_words=40, max_symbol_ratio=0.2)
    assert configs["train"].max_steps == 7


def test_fields_of_flat_sections_keep_their_bare_flags():
    configs = resolve(["--out", "elsewhere", "--max-steps", "3", "--max_steps", "4", "--resume"])
    assert (configs["run"].out, configs["train"].max_steps, configs["run"].resume) == (
        "elsewhere", 4, True,
    )
    with pytest.raises(SystemExit):  # data is not flat: only its dotted flags exist
        parser_for().parse_args(["--extractor", "careful"])


def test_booleans_lists_mappings_and_choices_take_their_natural_spelling():
    configs = resolve(["--no-data.dedup", "--data.languages", "en", "de", "--data.min_scores",
                       "en=0.5,de=0.7", "--data.extractor", "careful"])  # fmt: skip
    data = configs["data"]
    assert data.dedup is False and data.languages == ["en", "de"]
    assert data.min_scores == {"en": 0.5, "de": 0.7} and data.extractor == "careful"
    with pytest.raises(SystemExit):
        parser_for().parse_args(["--data.extractor", "magic"])


def test_only_the_flags_given_count(capsys):
    args = parser_for().parse_args([])
    assert not [key for key in vars(args) if key.startswith(("data.", "train.", "run."))]
    assert resolve([]) == {"data": DataSection(), "train": TrainSection(), "run": RunSection()}


def test_help_has_a_group_per_section_with_descriptions_and_defaults(capsys):
    with pytest.raises(SystemExit):
        parser_for().parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "data: Which documents are kept:" in help_text
    assert "data.quality: Drops documents too short to be prose: None turns it off." in help_text
    assert ("--data.quality.min_words MIN_WORDS Fewest words a kept document has. "
            "(default: 50)") in help_text
    assert "--train.max_steps, --max-steps MAX_STEPS" in help_text
    assert "--train.max-steps" not in help_text  # accepted, not listed twice


# --- recipe, then flags ------------------------------------------------------------------------


def test_flags_override_the_recipe_which_overrides_the_defaults():
    recipe = {"train": {"lr": 1e-3, "max_steps": 50}, "data": {"quality": {"min_words": 40}}}
    configs = resolve(["--train.max_steps", "2"], recipe)
    assert configs["train"] == TrainSection(lr=1e-3, max_steps=2)
    # A nested section named in part keeps its other defaults.
    assert configs["data"].quality == QualityFilter(min_words=40)


def test_null_turns_a_nested_filter_off_and_a_flag_of_it_turns_it_back_on():
    assert resolve([], {"data": {"quality": None}})["data"].quality is None
    configs = resolve(["--data.quality.min_words", "9"], {"data": {"quality": None}})
    assert configs["data"].quality == QualityFilter(min_words=9)


def test_an_unknown_key_is_refused_with_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"r\.yaml: unknown key train\.max_step \(did you mean "
                                          r"train\.max_steps\?\)"):  # fmt: skip
        resolve([], {"train": {"max_step": 3}}, recipe_name="r.yaml")
    with pytest.raises(ConfigError, match=r"unknown key data\.quality\.min_word \(did you mean "
                                          r"data\.quality\.min_words\?\)"):  # fmt: skip
        resolve([], {"data": {"quality": {"min_word": 3}}})


def test_an_unknown_section_is_refused_with_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown section 'trian' \(did you mean train\?\)"):
        resolve([], {"trian": {"lr": 1.0}})
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        resolve([], {"train": 3})


def test_a_recipe_for_more_stages_configures_one_of_them():
    class ShardSection(BaseModel):
        vocab_size: int = 8192

    class PipelineRun(BaseModel):
        work_dir: str = "work/pipeline"

    others = lambda: {"shards": [ShardSection], "run": [RunSection, PipelineRun]}  # noqa: E731
    recipe = {"shards": {"vocab_size": 300}, "run": {"work_dir": "w", "out": "o"}}
    configs = resolve([], recipe, other_sections=others)
    assert configs["run"].out == "o" and "shards" not in configs
    with pytest.raises(ConfigError, match=r"unknown key run\.work_dri"):
        resolve([], {"run": {"work_dri": "w"}}, other_sections=others)


def test_bad_values_are_refused_naming_the_flag_as_typed_or_the_recipe_key():
    with pytest.raises(ConfigError) as error:
        resolve(["--max-steps", "0", "--train.lr", "-1"])
    assert str(error.value) == (
        "--train.lr: Input should be greater than 0 (got -1.0); "
        "--max-steps: Input should be greater than or equal to 1 (got 0)"
    )
    with pytest.raises(ConfigError, match=r"^data\.quality\.min_words in r\.yaml: Input should "
                                          r"be greater than or equal to 1 \(got 0\)$"):  # fmt: skip
        resolve([], {"data": {"quality": {"min_words": 0}}}, recipe_name="r.yaml")
    with pytest.raises(ConfigError, match=r"^--data\.min_scores de: Input should be a valid "
                                          r"number"):  # fmt: skip
        resolve(["--data.min_scores", "de=lots"])


# --- the record of a run -----------------------------------------------------------------------


def test_the_dumped_config_is_a_recipe_that_resolves_to_the_same_sections(tmp_path):
    configs = resolve(["--data.languages", "en", "--train.lr", "0.01", "--no-data.dedup"])
    path = dump_config(configs, tmp_path / "config.yaml", command="train")
    metadata, sections = read_config_file(path)
    assert metadata == {"lmforge_version": __version__, "command": "train"}
    assert load_recipe(path) == sections
    assert resolve([], sections) == configs
    # Sorted keys: the same config is the same file, byte for byte.
    again = dump_config(resolve([], sections), tmp_path / "again.yaml", command="train")
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "does not exist"),
        ("train: [1, 2\n", "is not valid YAML"),
        ("- train\n", "must be a mapping of sections"),
    ],
)
def test_an_unreadable_recipe_is_refused_naming_the_file(content, problem, tmp_path):
    path = tmp_path / "recipe.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"recipe {path} {problem}"):
        load_recipe(path)


def test_log_config_writes_the_stage_folder_and_the_active_mlflow_run(tmp_path):
    import mlflow

    configs = resolve(["--train.lr", "0.01"])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("recipes", (tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            path = log_config(configs, tmp_path, "train")
        assert path == tmp_path / "config.yaml"
        logged = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="config.yaml", dst_path=str(tmp_path / "dl")
        )
        assert Path(logged).read_text() == path.read_text()
        assert yaml.safe_load(path.read_text())["train"]["lr"] == 0.01
    finally:
        mlflow.set_tracking_uri(None)


# --- flows and the reference ------------------------------------------------------------------


def toy_flow(train: TrainSection, run: RunSection, parent_run_id: str | None = None) -> dict:
    return {"lr": train.lr, "out": run.out}


def test_a_flows_sections_are_its_parameters_annotated_with_a_model():
    assert flow_sections(toy_flow) == {"train": TrainSection, "run": RunSection}
    configs = resolve(["--train.lr", "0.5"])
    assert call_with_sections(toy_flow, configs) == {"lr": 0.5, "out": "work/train"}


def test_the_reference_has_a_row_per_field_with_type_default_and_limits():
    reference = config_reference_markdown({"train": {"train": TrainSection, "data": DataSection}})
    assert "#### `train` — TrainSection" in reference
    assert "How the model is trained. Used by `lmforge train`." in reference
    assert "| `--train.max_steps` | int | `100` | ≥ 1 | Optimizer steps. |" in reference
    assert "| `--data.quality.max_symbol_ratio` | float | `0.1` | > 0.0, ≤ 1.0 |" in reference
    assert "| `--data.extractor` | 'fast' \\| 'careful' | `fast` |" in reference


def test_the_readme_block_is_replaced_between_its_markers():
    readme = f"intro\n{README_START}\nold\n{README_END}\nrest\n"
    replaced = replace_readme_block(readme, "new\n")
    assert replaced == f"intro\n{README_START}\nnew\n{README_END}\nrest\n"


@pytest.mark.slow  # imports every flow
def test_the_readme_config_reference_is_generated_from_the_current_fields():
    from lmforge.config_reference import registry_sections

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    expected = replace_readme_block(readme, config_reference_markdown(registry_sections()))
    assert readme == expected, "stale: run `python -m lmforge.config_reference --readme README.md`"


def test_a_bare_name_two_sections_share_is_the_primary_sections_or_no_ones():
    class Shards(BaseModel):
        seed: int = 0
        out: str = "work/shards"

    class Train(BaseModel):
        seed: int = 0

    sections = {"run": RunSection, "shards": Shards, "train": Train}
    parser = parser_for(sections, flat=("run", "shards", "train"))
    args = parser.parse_args(["--out", "o", "--shards.seed", "1", "--train.seed", "2"])
    configs = resolve_sections(args, sections)
    assert (configs["run"].out, configs["shards"].out) == ("o", "work/shards")
    assert (configs["shards"].seed, configs["train"].seed) == (1, 2)
    with pytest.raises(SystemExit):  # which seed? neither, rather than a guess
        parser.parse_args(["--seed", "3"])


# --- end to end: a recipe through `lmforge run`, then `lmforge reproduce` ----------------------


def output_digests(stage_dir: Path) -> dict[str, str]:
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    return {entry["path"]: entry["sha256"] for entry in manifest["outputs"]}


@pytest.fixture(scope="module")
def recipe_run(prefect_api, tmp_path_factory):
    """`lmforge run --config recipe.yaml --train.max_steps 2` on a tiny crawl: a custom model
    shape and a changed quality-filter threshold in the recipe, a flag overriding the file."""
    import mlflow

    from lmforge.cli import main
    from lmforge.tasks.data.sample.corpus import build_sample_corpus

    root = tmp_path_factory.mktemp("recipe")
    build_sample_corpus(root / "crawl", n_files=2, max_pages=40)
    recipe = {
        "model": {"preset": "tiny", "n_layer": 1, "d_model": 32, "n_head": 2},
        "data": {"gopher_quality": {"min_words": 40}},
        "shards": {"vocab_size": 300},
        "train": {"max_steps": 50, "batch_size": 2, "seq_len": 16},
        "run": {"input": [str(root / "crawl" / "*.warc.gz")], "work_dir": str(root / "work"),
                "register_model": False},  # fmt: skip
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setattr("lmforge.flows.tracking._configured_uri", None)
        assert main(["run", "--config", str(root / "recipe.yaml"), "--train.max_steps", "2"]) == 0
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        yield root, {run.data.tags["lmforge.stage"]: run for run in runs}


@pytest.mark.slow
def test_a_recipe_runs_end_to_end_and_its_settings_are_in_every_record(recipe_run, tmp_path):
    import mlflow

    root, runs = recipe_run
    work = root / "work"
    logged = mlflow.artifacts.download_artifacts(
        run_id=runs["pipeline"].info.run_id, artifact_path="config.yaml", dst_path=str(tmp_path)
    )
    config = yaml.safe_load(Path(logged).read_text())
    assert config["model"]["n_layer"] == 1 and config["model"]["d_model"] == 32
    assert config["data"]["gopher_quality"]["min_words"] == 40
    assert config["train"]["max_steps"] == 2  # the flag over the file's 50
    assert config["lmforge_version"] == __version__ and config["command"] == "run"
    # The same record beside every stage's output, naming the stage's own command.
    assert yaml.safe_load((work / "config.yaml").read_text()) == config
    for stage, command in [("data", "data refresh"), ("shards", "shards build"),
                           ("train", "train"), ("eval", "eval")]:  # fmt: skip
        assert yaml.safe_load((work / stage / "config.yaml").read_text())["command"] == command
    # The manifests: the data stage's filter threshold, the trained model's shape.
    data = json.loads((work / "data" / "manifest.json").read_text())
    assert data["params"]["gopher_quality"]["min_words"] == 40
    trained = json.loads((work / "train" / "manifest.json").read_text())
    assert trained["model_config"]["n_layer"] == 1 and trained["model_config"]["d_model"] == 32
    assert trained["counts"]["steps"] == 2
    # MLflow: each stage's run has the settings among its parameters.
    assert runs["data_refresh"].data.params["data.gopher_quality.min_words"] == "40"
    assert runs["pretrain"].data.params["model.n_layer"] == "1"


@pytest.mark.slow
def test_reproduce_repeats_a_finished_run_with_identical_data_and_shard_digests(recipe_run):
    from lmforge.cli import main

    root, runs = recipe_run
    again = root / "again"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setattr("lmforge.flows.tracking._configured_uri", None)
        code = main(["reproduce", runs["pipeline"].info.run_id, "--work-dir", str(again)])
    assert code == 0
    for stage in ("data", "shards"):
        assert output_digests(again / stage) == output_digests(root / "work" / stage), stage
    trained = json.loads((again / "train" / "manifest.json").read_text())
    assert trained["model_config"]["n_layer"] == 1 and trained["counts"]["steps"] == 2


def test_a_nested_model_given_in_part_starts_from_the_fields_own_default():
    class Strict(BaseModel):
        quality: QualityFilter = QualityFilter(min_words=200)

    parser = parser_for({"strict": Strict}, flat=())
    args = parser.parse_args(["--strict.quality.max_symbol_ratio", "0.5"])
    configs = resolve_sections(args, {"strict": Strict})
    assert configs["strict"].quality == QualityFilter(min_words=200, max_symbol_ratio=0.5)


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class RepetitionFilter:
    """Drops documents that repeat their lines."""

    max_duplicate_lines: float | None = Field(0.3, ge=0.0, description="Most repeated lines.")


class DataWithDataclassFilter(BaseModel):
    repetition: RepetitionFilter | None = RepetitionFilter()


def test_a_filter_that_is_a_pydantic_dataclass_is_a_nested_section_too():
    sections = {"data": DataWithDataclassFilter}
    parser = parser_for(sections, flat=())
    args = parser.parse_args(["--data.repetition.max_duplicate_lines", "0.5"])
    assert resolve_sections(args, sections)["data"].repetition == RepetitionFilter(0.5)
    with pytest.raises(ConfigError, match=r"unknown key data\.repetition\.max_duplicate_line "):
        resolve_sections(parser.parse_args([]), sections,
                         {"data": {"repetition": {"max_duplicate_line": 1}}})  # fmt: skip
    reference = config_reference_markdown({"data refresh": sections})
    row = "| `--data.repetition.max_duplicate_lines` | float \\| None | `0.3` | ≥ 0.0 |"
    assert row in reference


def test_a_per_language_flag_reads_lang_equals_value_and_names_a_bad_entry():
    from lmforge.recipes import parse_language_mapping

    form = "LANG=VALUE (e.g. en=0.7,ja=0.5)"
    assert parse_language_mapping(" en=0.7, ja = 0.5,", "entry", form) == {"en": "0.7", "ja": "0.5"}
    assert parse_language_mapping({"en": 0.7}, "entry", form) == {"en": 0.7}
    with pytest.raises(ValueError, match=r"entry '=0.5' is not LANG=VALUE"):
        parse_language_mapping("en=0.7,=0.5", "entry", form)
