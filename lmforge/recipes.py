"""Recipes: a stage's typed config sections, spelled the same on the command line, in a YAML
recipe file and in the record every run leaves (`config.yaml` beside its output and in its
MLflow run).

A section is a pydantic model, named by the flow parameter that takes it (`train`, `model`,
`data`). Each leaf field is a flag with its dotted path (`--train.lr 3e-4`,
`--data.gopher_quality.min_words 40`, kebab case accepted) and a key of the same path in a
recipe. A value comes from the flag if one is given, else from the recipe, else the field's
default; then each section is validated by its model. A recorded `config.yaml` is a recipe too,
so `lmforge run --config config.yaml` repeats a run. The README's config reference is written
from these sections by `lmforge.config_reference`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import enum
import inspect
import json
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from lmforge import __version__
from lmforge.errors import LmforgeError, one_line

CONFIG_FILE = "config.yaml"
# Keys of a recorded config.yaml that describe the run rather than configure it.
METADATA_KEYS = ("lmforge_version", "command")
# Namespace attributes: which option spelled each value, and each field's display flag.
SPELLINGS = "config_spellings"
DISPLAY_FLAGS = "config_flags"
# Top-level options no field may take over as its bare spelling.
RESERVED_FLAGS = frozenset({"config", "debug", "help", "version"})
README_START = "<!-- config-reference:start -->"
README_END = "<!-- config-reference:end -->"


class ConfigError(LmforgeError):
    """A recipe or flag value that cannot configure a stage; the message names the key."""


# --- the fields of a section ------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigField:
    """One leaf of a section: `train.max_steps`, `data.gopher_quality.min_words`."""

    section: str
    path: tuple[str, ...]
    info: FieldInfo

    @property
    def dotted(self) -> str:
        return ".".join((self.section, *self.path))


def nested_model(annotation: Any) -> type | None:
    """The model of a nested section (`GopherQualityFilter | None` -> GopherQualityFilter): a
    pydantic model or a pydantic dataclass (a filter is a frozen dataclass of thresholds)."""
    inner = _without_none(annotation)
    if not inspect.isclass(inner):
        return None
    is_model = issubclass(inner, BaseModel) or (
        dataclasses.is_dataclass(inner) and hasattr(inner, "__pydantic_fields__")
    )
    return inner if is_model else None


def fields_of(model: type) -> dict[str, FieldInfo]:
    """A pydantic model's or pydantic dataclass's fields, in declaration order."""
    return model.model_fields if issubclass(model, BaseModel) else model.__pydantic_fields__


def config_fields(
    section: str, model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[ConfigField]:
    """Every leaf field of `model`, nested models walked depth first in declaration order."""
    for name, info in fields_of(model).items():
        inner = nested_model(info.annotation)
        if inner is not None:
            yield from config_fields(section, inner, (*prefix, name))
        else:
            yield ConfigField(section, (*prefix, name), info)


def model_groups(
    section: str, model: type, prefix: tuple[str, ...] = (), info: FieldInfo | None = None
) -> Iterator[tuple[str, type, FieldInfo | None]]:
    """`("train", TrainConfig, None)`, `("data.gopher_quality", GopherQualityFilter, <its field>)`,
    ...: the section and each nested model in it, by dotted path, with the field holding it."""
    yield ".".join((section, *prefix)), model, info
    for name, field in fields_of(model).items():
        inner = nested_model(field.annotation)
        if inner is not None:
            yield from model_groups(section, inner, (*prefix, name), field)


def flow_sections(flow: Callable[..., Any]) -> dict[str, type[BaseModel]]:
    """The config sections a flow takes: its parameters annotated with a pydantic model, by
    parameter name, in signature order (`parent_run_id` and other plain values are not)."""
    function = getattr(flow, "fn", flow)  # a Prefect Flow wraps the function
    hints = typing.get_type_hints(function)
    sections = {}
    for name in inspect.signature(function).parameters:
        model = nested_model(hints.get(name))
        if model is not None and issubclass(model, BaseModel):
            sections[name] = model
    return sections


def call_with_sections(function: Callable[..., Any], sections: Mapping[str, Any]) -> Any:
    """Call `function` with the sections its parameters name (a flow, or a check of its inputs)."""
    names = inspect.signature(getattr(function, "fn", function)).parameters
    return function(**{name: value for name, value in sections.items() if name in names})


def _without_none(annotation: Any) -> Any:
    """`X | None` -> X; other annotations unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


SEQUENCES = (list, tuple, set, frozenset)


def _value_kind(annotation: Any) -> tuple[Any, bool]:
    """(element type, is a sequence): `list[str] | None` -> (str, True); `int` -> (int, False)."""
    inner = _without_none(annotation)
    origin = typing.get_origin(inner)
    if origin in SEQUENCES or inner in SEQUENCES:
        args = [arg for arg in typing.get_args(inner) if arg is not Ellipsis]
        return (_without_none(args[0]) if args else str), True
    return inner, False


# --- flags ------------------------------------------------------------------------------------


class _StoreValue(argparse.Action):
    """Stores the value and remembers which spelling gave it, so errors can repeat it."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _remember_spelling(namespace, self.dest, option_string)


class _StoreSwitch(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _remember_spelling(namespace, self.dest, option_string)


def _remember_spelling(namespace: argparse.Namespace, dest: str, option: str | None) -> None:
    spellings = getattr(namespace, SPELLINGS, None)
    if spellings is None:
        spellings = {}
        setattr(namespace, SPELLINGS, spellings)
    spellings[dest] = option


class ConfigHelpFormatter(argparse.HelpFormatter):
    """Lists a field's dotted flag and its bare one, not the alternative kebab spellings."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        # Never `per-` / `language`: a description stays searchable in the help.
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = getattr(action, "shown_options", None)
        if shown is None or not action.option_strings:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return ", ".join(shown)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(shown) + " " + metavar


def _kebab(text: str) -> str:
    return text.replace("_", "-")


def field_help(info: FieldInfo) -> str:
    text = " ".join((info.description or "").split())
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if default not in (None, [], (), {}, "") and nested_model(type(default)) is None:
        text = f"{text} (default: {_plain(default)})" if text else f"default: {_plain(default)}"
    return text.replace("%", "%%")  # argparse %-formats help


def _plain(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    sections: Mapping[str, type[BaseModel]],
    flat: Iterable[str] = (),
    renames: Mapping[str, str] | None = None,
) -> None:
    """One flag per leaf field of every section: `--{section}.{field}[.{sub}...]`, kebab case
    accepted; an argument group per section and per nested model, titled with its docstring.

    Top-level fields of the sections in `flat` (and nested fields whose `json_schema_extra`
    names a `flag`) also take the bare `--field` spelling; a name
    several of them share goes to the first of `flat` (the primary section) if it has one, else
    stays dotted only. `renames` maps a field name to another bare name, e.g. {"out": "eval-dir"}.
    Booleans are `--x/--no-x`, sequences take several values, other values (numbers excepted)
    reach the model as typed, so its validators parse them. Nothing has an argparse default: only
    given flags count (see `resolve_sections`). Adds `--config PATH`.
    """
    renames = renames or {}
    holders: dict[str, list[str]] = {}  # bare name -> the flat sections with such a field
    for section in (name for name in flat if name in sections):
        for name, info in fields_of(sections[section]).items():
            if nested_model(info.annotation) is None:
                holders.setdefault(_kebab(renames.get(name, name)), []).append(f"{section}.{name}")
    for section in (name for name in flat if name in sections):
        # A nested field may name its own bare flag (`--decontaminate` for the benchmarks of
        # data.decontaminate): the one setting users give that step.
        for field in config_fields(section, sections[section]):
            extra = field.info.json_schema_extra
            if isinstance(extra, dict) and isinstance(extra.get("flag"), str):
                holders.setdefault(extra["flag"], []).append(field.dotted)
    bare: dict[str, str] = {}  # dotted path -> bare name
    primary = next((name for name in flat if name in sections), None)
    for spelled, dotted in holders.items():
        # A name two sections share is the primary section's, or no one's: a guess could
        # silently set the wrong one (`--seed` of shards or of train?).
        if spelled not in RESERVED_FLAGS and (
            len(dotted) == 1 or dotted[0].startswith(f"{primary}.")
        ):
            bare[dotted[0]] = spelled
    display: dict[str, str] = {}
    for section, model in sections.items():
        groups = {
            path: _group(parser, path, nested, info)
            for path, nested, info in model_groups(section, model)
        }
        for field in config_fields(section, model):
            group = groups[".".join((field.section, *field.path[:-1]))]
            shown, hidden = [f"--{field.dotted}"], [f"--{_kebab(field.dotted)}"]
            if field.dotted in bare:
                name = bare[field.dotted]
                shown.append(f"--{name}")
                hidden.append(f"--{name.replace('-', '_')}")
            display[field.dotted] = shown[-1]
            _add_field_flag(group, field, shown, [h for h in hidden if h not in shown])
    parser.set_defaults(**{DISPLAY_FLAGS: display})
    parser.add_argument(
        "--config",
        metavar="RECIPE",
        default=argparse.SUPPRESS,
        help="YAML recipe: section -> field -> value (a run's recorded config.yaml is one); "
        "flags override it",
    )


def _group(
    parser: argparse.ArgumentParser, path: str, model: type, info: FieldInfo | None
) -> Any:
    first = summary_line(model)
    title = f"{path}: {first}" if first else path
    description = info.description.replace("%", "%%") if info and info.description else None
    return parser.add_argument_group(title, description)


def summary_line(model: type) -> str:
    """The first sentence of the model's own docstring, without its period ("" without one:
    not BaseModel's, nor the signature a dataclass gets for a docstring)."""
    doc = inspect.cleandoc(model.__dict__.get("__doc__") or "")
    if not doc or doc.startswith(f"{model.__name__}("):
        return ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    return paragraph.split(". ")[0].removesuffix(".")


def _add_field_flag(group: Any, field: ConfigField, shown: list[str], hidden: list[str]) -> None:
    element, many = _value_kind(field.info.annotation)
    options: dict[str, Any] = {
        "dest": field.dotted,
        "default": argparse.SUPPRESS,
        "help": field_help(field.info),
    }
    if element is bool and not many:
        action = group.add_argument(*shown, *hidden, action=_StoreSwitch, **options)
        action.shown_options = [s for s in action.option_strings if _switch_base(s) in shown]
        return
    if many:
        options["nargs"] = "+"
    if typing.get_origin(element) is typing.Literal:
        options["choices"] = list(typing.get_args(element))
    elif inspect.isclass(element) and issubclass(element, enum.Enum):
        options["choices"] = [member.value for member in element]
    elif element in (int, float):
        options["type"] = element
    if "choices" not in options:
        options["metavar"] = field.path[-1].upper()
    action = group.add_argument(*shown, *hidden, action=_StoreValue, **options)
    action.shown_options = shown


def _switch_base(option: str) -> str:
    return "--" + option[len("--no-"):] if option.startswith("--no-") else option


# --- resolving: defaults <- recipe <- flags ---------------------------------------------------


def parse_language_mapping(value: object, entry_name: str, form: str) -> object:
    """A per-language field's one CLI string, `en=0.7,ja=0.5`, -> {"en": "0.7", "ja": "0.5"}
    for pydantic to type; a mapping (the UI, a recipe, Python) passes through. An entry without
    `=` or a language raises ValueError: "{entry_name} 'x' is not {form}"."""
    if not isinstance(value, str):
        return value
    mapping: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        lang, sep, text = entry.partition("=")
        if not sep or not lang.strip():
            raise ValueError(f"{entry_name} {entry!r} is not {form}")
        mapping[lang.strip()] = text.strip()
    return mapping


def resolve_sections(
    args: argparse.Namespace,
    sections: Mapping[str, type[BaseModel]],
    recipe: Mapping[str, Any] | None = None,
    *,
    recipe_name: str = "the recipe",
    other_sections: Callable[[], Mapping[str, Iterable[type[BaseModel]]]] | None = None,
) -> dict[str, BaseModel]:
    """Each section validated from its defaults, overridden by `recipe` (section -> nested
    mapping), overridden by the flags given in `args` (from `add_config_flags`).

    Raises ConfigError naming the key: an unknown section or field in the recipe (with the
    closest valid one), or values the models refuse, one `--flag: problem (got value)` per
    problem. `other_sections()` (called only when needed) lists the sections of the other
    commands: a recipe for the whole pipeline configures a single stage too, its other sections
    (and fields of a like-named section of another command) left aside, not refused.
    """
    recipe = dict(recipe or {})
    _check_recipe_keys(recipe, sections, recipe_name, other_sections)
    given = vars(args)
    spellings = given.get(SPELLINGS) or {}
    display = given.get(DISPLAY_FLAGS) or {}
    resolved: dict[str, BaseModel] = {}
    problems: list[str] = []
    for section, model in sections.items():
        values = copy.deepcopy(recipe.get(section) or {})
        flagged = set()
        for field in config_fields(section, model):
            if field.dotted in given:
                _set_path(values, field.path, given[field.dotted])
                flagged.add(field.dotted)
        values = _known_part(model, values)
        try:
            resolved[section] = model.model_validate(values)
        except ValidationError as error:
            for problem in error.errors():
                where = _problem_name(section, problem["loc"], spellings, display, flagged,
                                      recipe.get(section), recipe_name)  # fmt: skip
                got = "" if problem["type"] == "missing" else (
                    f" (got {one_line(repr(problem.get('input')), 60)})"
                )
                problems.append(f"{where}: {problem['msg']}{got}")
    if problems:
        raise ConfigError("; ".join(problems))
    return resolved


def _known_part(model: type[BaseModel], values: Any) -> Any:
    """`values` without the keys `model` does not have (already checked to belong elsewhere);
    a nested model given in part starts from the field's default, not from its class's."""
    if not isinstance(values, dict):
        return values
    kept = {}
    for key, value in values.items():
        if key not in fields_of(model):
            continue
        info = fields_of(model)[key]
        inner = nested_model(info.annotation)
        if inner is not None and isinstance(value, dict):
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                value = merged_mapping(default.model_dump(exclude_unset=True), value)
            value = _known_part(inner, value)
        kept[key] = value
    return kept


def merged_mapping(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` laid over `base` key by key, nested mappings merged the same way (how a recipe
    lays a partly given nested section over its default)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            value = merged_mapping(merged[key], value)
        merged[key] = value
    return merged


def _set_path(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(values.get(key), dict):
            values[key] = {}  # a nested model the recipe turned off (null) is on again
        values = values[key]
    values[path[-1]] = value


def _problem_name(
    section: str,
    loc: tuple[Any, ...],
    spellings: Mapping[str, str | None],
    display: Mapping[str, str],
    flagged: set[str],
    recipe_section: Any,
    recipe_name: str,
) -> str:
    """The flag as typed (`--max-steps`), the recipe key (`train.lr in r.yaml`), or the flag."""
    parts = [str(part) for part in loc]
    for cut in range(len(parts), 0, -1):
        dotted = ".".join((section, *parts[:cut]))
        rest = " ".join(parts[cut:])
        suffix = f" {rest}" if rest else ""
        if dotted in flagged:
            return f"{spellings.get(dotted) or display.get(dotted, '--' + dotted)}{suffix}"
        if _has_path(recipe_section, parts[:cut]):
            return f"{dotted}{suffix} in {recipe_name}"
        if dotted in display:
            return f"{display[dotted]}{suffix}"
    return f"--{section}" if not parts else "--" + ".".join((section, *parts))


def _has_path(values: Any, path: list[str]) -> bool:
    for key in path:
        if not isinstance(values, Mapping) or key not in values:
            return False
        values = values[key]
    return True


def _check_recipe_keys(
    recipe: Mapping[str, Any],
    sections: Mapping[str, type[BaseModel]],
    recipe_name: str,
    other_sections: Callable[[], Mapping[str, Iterable[type[BaseModel]]]] | None,
) -> None:
    others: dict[str, list[type[BaseModel]]] = {}

    def elsewhere(section: str) -> list[type[BaseModel]]:
        if not others and other_sections is not None:  # imports every flow: only when needed
            others.update({name: list(models) for name, models in other_sections().items()})
        return others.get(section, [])

    for section, values in recipe.items():
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(
                f"{recipe_name}: section {section!r} must be a mapping of field: value, "
                f"got {one_line(repr(values), 60)}"
            )
        mine = [sections[section]] if section in sections else []
        if mine and _unknown_key(mine, values or {}, section) is None:
            continue
        models = [*mine, *elsewhere(section)]
        if not models:
            known = sorted({*sections, *others})
            raise ConfigError(
                f"{recipe_name}: unknown section {section!r}{_did_you_mean(section, known)}; "
                f"the sections are {', '.join(known)}"
            )
        unknown = _unknown_key(models, values or {}, section)
        if unknown is not None:
            dotted, candidates = unknown
            raise ConfigError(
                f"{recipe_name}: unknown key {dotted}{_did_you_mean(dotted, candidates)}"
            )


def _unknown_key(
    models: list[type[BaseModel]], values: Mapping[str, Any], prefix: str
) -> tuple[str, list[str]] | None:
    """The first key of `values` that none of `models` has (dotted, with the valid keys), or
    None. A key known to any of them is followed into its nested model."""
    if not models:
        return None
    for key, value in values.items():
        holders = [model for model in models if key in fields_of(model)]
        if not holders:
            candidates = sorted({f"{prefix}.{name}" for m in models for name in fields_of(m)})
            return f"{prefix}.{key}", candidates
        nested = [
            inner for model in holders
            if (inner := nested_model(fields_of(model)[key].annotation)) is not None
        ]  # fmt: skip
        if nested and isinstance(value, Mapping):
            found = _unknown_key(nested, value, f"{prefix}.{key}")
            if found is not None:
                return found
    return None


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# --- recipe files and the record of a run -----------------------------------------------------


def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, sections) of a recipe or recorded config.yaml; ConfigError naming the file
    when it is missing, not YAML or not a mapping of sections."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe {path} does not exist: check the --config path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"recipe {path} cannot be read: {one_line(error)}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe {path} is not valid YAML: {one_line(error)}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"recipe {path} must be a mapping of sections (train:, model:, ...), "
            f"got {type(document).__name__}"
        )
    metadata = {key: document.pop(key) for key in METADATA_KEYS if key in document}
    return metadata, document


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The sections of a recipe file (what `dump_config` writes is one; its metadata is left
    out)."""
    return read_config_file(path)[1]


def config_document(
    sections: Mapping[str, BaseModel], command: str | None = None
) -> dict[str, Any]:
    """The resolved config as plain data: every field of every section, and lmforge's version."""
    document: dict[str, Any] = {"lmforge_version": __version__}
    if command is not None:
        document["command"] = command
    for name, config in sections.items():
        document[name] = config.model_dump(mode="json")
    return document


def dump_config(
    sections: Mapping[str, BaseModel], path: str | Path, command: str | None = None
) -> Path:
    """Write the resolved config as YAML (keys sorted, so equal configs give equal files);
    `command` ("train", "data refresh") is what `lmforge reproduce` runs. Returns the path."""
    path = Path(path)
    text = yaml.safe_dump(config_document(sections, command), sort_keys=True, allow_unicode=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file
    return path


def log_config(sections: Mapping[str, BaseModel], stage_dir: str | Path, command: str) -> Path:
    """Record a finished stage's resolved config: `<stage_dir>/config.yaml` and, when an MLflow
    run is active, its `config.yaml` artifact. Call it after the stage's output is complete (the
    output folder is claimed and renamed into place first; the file is not one of the
    manifest's outputs, so the output digests do not depend on where a run wrote)."""
    Path(stage_dir).mkdir(parents=True, exist_ok=True)  # a pipeline's work dir, at its start
    path = dump_config(sections, Path(stage_dir) / CONFIG_FILE, command)
    mlflow = sys.modules.get("mlflow")  # no run can be active unless mlflow is loaded
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.log_artifact(str(path))
    return path


# --- the reference of every field, for the README ---------------------------------------------


def config_reference_markdown(registry: Mapping[str, Mapping[str, type[BaseModel]]]) -> str:
    """A table per section model (command -> sections, as `flow_sections` gives them): flag,
    type, default, limits, description of every leaf field. A section name shared by commands
    with different models (`run`) gets a table per model."""
    users: dict[tuple[str, type[BaseModel]], list[str]] = {}
    for command, sections in registry.items():
        for section, model in sections.items():
            users.setdefault((section, model), []).append(command)
    blocks = []
    for (section, model), commands in users.items():
        title = f"#### `{section}` — {model.__name__}"
        used = ", ".join(f"`lmforge {command}`" for command in commands)
        summary = summary_line(model)
        lines = [title, "", f"{summary}. Used by {used}." if summary else f"Used by {used}.", ""]
        lines += ["| flag | type | default | limits | description |", "|---|---|---|---|---|"]
        holders = {path: info for path, _, info in model_groups(section, model) if info}
        for field in config_fields(section, model):
            holder = ".".join((section, *field.path[:-1]))
            if holder in holders:  # the nested model's own row, before its first field
                info = holders.pop(holder)
                cells = (f"`{holder}`", _type_name(info.annotation), "", "",
                         " ".join((info.description or "").split()))  # fmt: skip
                lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
            cells = (
                f"`--{field.dotted}`",
                _type_name(field.info.annotation),
                _default_text(field.info),
                _limits(field.info),
                " ".join((field.info.description or "").split()),
            )
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _type_name(annotation: Any) -> str:
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(arg) for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(
            "..." if arg is Ellipsis else _type_name(arg) for arg in typing.get_args(annotation)
        )
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    return f"`{_plain(default)}`"


def _limits(info: FieldInfo) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "min length",
               "max_length": "max length", "multiple_of": "multiple of"}  # fmt: skip
    found = []
    for constraint in info.metadata:
        for name, symbol in symbols.items():
            value = getattr(constraint, name, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    return ", ".join(found)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\\\\|", "\\|").replace("\n", " ")


def replace_readme_block(readme: str, reference: str) -> str:
    """`readme` with the text between the config-reference markers replaced by `reference`."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ConfigError(f"the README has no {README_START} ... {README_END} block")
    return readme[: start + len(README_START)] + "\n" + reference + readme[end:]
