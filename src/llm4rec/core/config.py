"""Start-up checks of the workflow configuration, told in a few lines that name the setting.

The Snakefile runs them before planning any job, so that a mistake the schema cannot see
(a head count that does not divide the width, an EASE that cannot fit in memory) fails at once
rather than hours later in a job's log; whether the backbone can be loaded is
`llm4rec.model.checks`'s part. Nothing here imports Snakemake, torch or transformers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MAX_ERRORS = 5
MAX_VALUES = 10_000

# The baselines' names (the schema's enum of baselines.run): no variant may take one.
BASELINES = ("popularity", "itemknn", "ease", "multivae")
MAX_MESSAGE = 200
_TRUE = {"1", "on", "yes", "true"}


class ConfigError(ValueError):
    """A configuration mistake; its message is short and names the setting."""


def setting(path: Iterable[Any]) -> str:
    """`datasets.demo.source`, `run_variants[0]`: a config path as a user writes it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def short_message(text: str) -> str:
    """One line of at most MAX_MESSAGE characters: jsonschema's words can quote whole blocks."""
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _describe(error: Any) -> str:
    """One line for one jsonschema error: an unknown key, a bad name, or jsonschema's words."""
    where = setting(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = set(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = [k for k in error.instance if k not in known and not any(re.search(p, k) for p in patterns)]
        keys = ", ".join(repr(setting([*error.absolute_path, k])) for k in extra)
        return short_message(f"config: unknown key {keys} (known here: {', '.join(sorted(known))})")
    if error.validator == "maxLength" and isinstance(error.instance, str):
        return short_message(
            f"config: {where}: the name {error.instance[:24]!r}... has {len(error.instance)} characters, at most "
            f"{error.validator_value}: names become folder and file names"
        )
    if error.validator == "uniqueItems":
        twice = next(v for i, v in enumerate(error.instance) if v in error.instance[:i])
        return short_message(f"config: {where}: {twice!r} is listed more than once (each entry is one run)")
    if error.validator in ("minItems", "minimum", "maximum") and "description" in schema:
        return short_message(f"config: {where}: {error.message}: {schema['description']}")
    if "propertyNames" in error.schema_path:
        why = schema.get("description", error.message)
        return short_message(f"config: {where}: name {error.instance!r} is not allowed: {why}")
    if error.validator in ("pattern", "not") and "description" in schema:
        return short_message(f"config: {where}: {error.instance!r} is not allowed: {schema['description']}")
    return short_message(f"config: {where}: {error.message}")


def schema_message(config: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    """Every schema violation of ``config``, one short line each (at most MAX_ERRORS)."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    lines = list(dict.fromkeys(_describe(e) for e in errors))
    if not lines:
        return "config: does not match workflow/schemas/config.schema.yaml"
    more = len(lines) - MAX_ERRORS
    return "\n".join(lines[:MAX_ERRORS] + ([f"... and {more} more"] if more > 0 else []))


def load_schema(path: str | Path) -> dict[str, Any]:
    """The schema as a dict, to re-check a config that Snakemake's `validate` refused."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


class _EndlessError(Exception):
    """A block of the config contains itself (raised deep down, told at the top)."""


def count_values(config: Any) -> int:
    """Values in ``config`` as the workflow reads them: a block that YAML aliases repeat counts
    each time, found without walking every repetition (a block met again is looked up)."""
    sizes: dict[int, int] = {}
    open_blocks: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (Mapping, list, tuple)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_blocks:
            raise _EndlessError
        open_blocks.add(key)
        total = 1 + sum(size(child) for child in (node.values() if isinstance(node, Mapping) else node))
        open_blocks.discard(key)
        sizes[key] = total
        return total

    try:
        return size(config)
    except _EndlessError:
        message = "config: a YAML alias (*name) refers to a block that contains it: the config has no end"
    except RecursionError:
        message = "config: blocks nested too deeply to be a configuration of this workflow"
    raise ConfigError(message)


def check_size(config: Mapping[str, Any], limit: int = MAX_VALUES) -> None:
    """Refuse a config of more values than this workflow can use (a YAML alias bomb) before the
    schema check, whose error message would print every repetition (minutes, gigabytes)."""
    n = count_values(config)
    if n > limit:
        raise ConfigError(
            f"config: {n:,} values in all, counting each repetition of a YAML alias (*name); a configuration of "
            f"this workflow has far fewer (at most {limit:,} are read): check the files given with --configfile"
        )


def check_names(config: Mapping[str, Any]) -> None:
    """`dataset` and `run_variants` must name entries that exist, and every method run (variants
    and baselines) its own name: the summary, the tests and the curves are keyed by it."""
    datasets = config["datasets"]
    if config["dataset"] not in datasets:
        raise ConfigError(
            f"config: dataset {config['dataset']!r} names no entry of 'datasets' (known: {', '.join(sorted(datasets))})"
        )
    for i, name in enumerate(config["run_variants"]):
        if name not in config["variants"]:
            raise ConfigError(
                f"config: run_variants[{i}] {name!r} is not in 'variants' (known: {', '.join(config['variants'])})"
            )
    baselines = list(config.get("baselines", {}).get("run", []))
    for i, name in enumerate(config["run_variants"]):
        if name in baselines:
            raise ConfigError(
                f"config: run_variants[{i}] {name!r} and baselines.run[{baselines.index(name)}] {name!r} are two "
                "methods of one name: their results would merge in the summary; rename the variant"
            )
        if name in BASELINES:
            raise ConfigError(
                f"config: run_variants[{i}] {name!r} has the name of the baseline {name!r} (not in baselines.run "
                "now): the workflow's files and curves of that baseline would be taken for it; rename the variant"
            )


def check_tiny(tiny: Mapping[str, int]) -> None:
    """GPT-2 splits the width evenly over the heads; otherwise `pretrain` would fail in its log."""
    if tiny["n_embd"] % tiny["n_head"]:
        raise ConfigError(
            f"config: model.tiny: n_embd ({tiny['n_embd']}) must be a multiple of n_head ({tiny['n_head']})"
        )


def check_precision(config: Mapping[str, Any]) -> None:
    """`model.dtype`, `model.lora` and `launch.mixed_precision` fit together and with the
    backbone, for the model block and every variant that runs."""
    model = config["model"]
    mixed = config.get("launch", {}).get("mixed_precision", "no")
    mixed = "no" if mixed is False else mixed
    dtype = model.get("dtype", "float32")
    if dtype != "float32" and mixed != "no":
        raise ConfigError(
            f"config: model.dtype {dtype} with launch.mixed_precision {mixed}: mixed precision keeps float32 "
            'weights and autocasts; choose one (model.dtype: float32, or launch.mixed_precision: "no")'
        )
    if not model.get("lora"):
        return
    if model["backbone"] == "tiny":
        raise ConfigError("config: model.lora needs a pre-trained backbone (a Hugging Face name or folder), not tiny")
    for where, block in _model_blocks(config):
        if block.get("freeze_backbone"):
            raise ConfigError(
                f"config: {where}: freeze_backbone true with model.lora: LoRA trains adapters inside the backbone "
                "(set freeze_backbone: false, or lora: null to train the tables only)"
            )


def _model_blocks(config: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """`model` and each run variant's `model` with its overrides, named as the user writes them."""
    model = config["model"]
    blocks = [("model", dict(model))]
    for v in config.get("run_variants", []):
        blocks.append((f"variants.{v}", {**model, **config["variants"].get(v, {})}))
    return blocks


def offline() -> bool:
    """Whether the Hugging Face hub may not be asked (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return any(os.getenv(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_backbone_layers(config: Mapping[str, Any]) -> None:
    """`backbone_layers` cuts a pre-trained backbone; tiny's depth is `model.tiny.n_layer`."""
    model = config["model"]
    if model["backbone"] != "tiny":
        return
    for where, block in _model_blocks(config):
        if block.get("backbone_layers"):
            raise ConfigError(
                f"config: {where}: backbone_layers with backbone tiny: it keeps the first blocks of a pre-trained "
                "backbone (tiny's depth is model.tiny.n_layer)"
            )


def check_config(config: Mapping[str, Any]) -> None:
    """What the schema cannot express, checked before any job is planned (that the backbone
    can be loaded is `llm4rec.model.checks.check_backbone`'s part: it needs transformers)."""
    check_names(config)
    model = config["model"]
    check_tiny(model["tiny"])
    check_precision(config)
    check_backbone_layers(config)


def check_ease_memory(config: Mapping[str, Any], local: bool = True) -> None:
    """EASE's dense item x item matrices must fit its memory limit: told at start, not after
    the other jobs ran. The catalog size is known once the dataset is preprocessed (its
    `stats.json`); before that the EASE job checks it first thing. With ``max_memory_gb: auto``
    and jobs on other machines (a cluster), their memory decides, so only a number is checked."""
    baselines = config.get("baselines", {})
    if "ease" not in baselines.get("run", []):
        return
    from llm4rec.core.memory import AUTO, catalog_size, ease_limit_gb, ease_need_gb

    setting = baselines["ease"]["max_memory_gb"]
    if setting == AUTO and not local:
        return
    stats = Path("results") / str(config["dataset"]) / "processed" / "stats.json"
    n_items = catalog_size(stats)
    if n_items is None:
        return
    try:
        limit, why = ease_limit_gb(setting)
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    need = ease_need_gb(n_items)
    if need > limit:
        raise ConfigError(
            f"config: baselines.ease.max_memory_gb: EASE needs about {need:.3g} GB for the {n_items} items of "
            f"{stats}, over its limit of {limit:.3g} GB ({why}).\n  (run on a machine with more memory, set "
            "max_memory_gb, or remove ease from baselines.run)"
        )
