"""Experiment profiles (``config/*.yaml``): read, checked, and turned into job arguments.

A profile is complete on its own and is checked in three steps, each problem reported as one
line ``FILE: KEY = VALUE: what is allowed``, all before any job runs:

1. YAML syntax (:func:`read_yaml`): the file, line and column of the first error.
2. The JSON schema ``workflow/schemas/config.schema.yaml`` (:func:`schema_problems`): types,
   ranges, required and unknown keys; one line per problem, never a dump of the config.
3. Rules across fields (:func:`rule_problems`): the training spec as :mod:`sngrad.spec` checks
   it (ordered learning-rate range inside ``lr_bounds``, ordered positive alpha ranges,
   at least two tuning seeds, ...), valid run names (:func:`sngrad.names.parse_run`),
   and splits that can feed every batch: with ``n`` examples available for training and
   validation (``sngrad.data``), the validation split holds ``round(val_fraction * n)``
   examples and the training split the rest, or ``data.train_size`` of them; every batch size
   must fit in the training split.

The Snakefile calls :func:`load_profile` (or :func:`check_profile` on a config Snakemake has
already read); ``python -m sngrad config check FILE`` runs the same checks by hand.
The helpers at the end build what the rules pass to the commands (:func:`training_spec`,
:func:`noise_batch_sizes`, ...), so that each is computed in one place.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sngrad import resources
from sngrad.errors import SngradError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_PROFILE = "config/default.yaml"  # what a plain `snakemake` runs (and publishes)
NOISE_VARIANTS = ("sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3")  # tuned runs the noise study reads
REFERENCE_RUN = "sgd"  # its chosen setting trains the noise study's reference run
NOISE_SUMMARY_BATCH_SIZE = 128  # the noise summary's per-batch figures are at this B (or nearest)
SEED_STUDY_BATCH_SIZES = (128, 1024)  # the batch sizes of the seed's original study
_SHOWN = 60  # characters of a value shown in a message


class ProfileError(SngradError):
    """A profile that fails its checks; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------------------- reading


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SngradError(f"{path}: cannot read profile: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and start is not None and mark is not None and start.line != mark.line:
            problem += f" ({context} at line {start.line + 1})"
        raise SngradError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise SngradError(f"{path}: a profile is a mapping of keys, got {type(data).__name__}")
    return data


def load_profile(path: str | Path, schema: str | Path = SCHEMA) -> dict:
    """Read and check one profile file (:class:`ProfileError` lists every problem), the
    reserved name ``default`` included, as the workflow checks it."""
    config = read_yaml(path)
    check_profile(config, str(path), schema)
    if config.get("profile") == "default":
        published = read_yaml(SCHEMA.parents[2] / DEFAULT_PROFILE)
        problem = reserved_name_problem(config, str(path), published)
        if problem:
            raise ProfileError([problem])
    return config


def check_profile(config: Mapping, source: str, schema: str | Path = SCHEMA) -> None:
    """Schema first; the cross-field rules only on a config the schema accepts."""
    problems = schema_problems(config, read_yaml(schema))
    if not problems:
        problems = rule_problems(config)
    if problems:
        raise ProfileError([f"{source}: {p}" for p in problems])
    resources.warn(config, source)  # work far above the default's: a warning, not an error


# ----------------------------------------------------------------------------- schema


def _key(path) -> str:
    """A JSON path as the dotted key a user types: ``tune.alpha.II[1]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _allowed(error) -> str:
    """What the failed schema keyword allows, in words."""
    kind, bound = error.validator, error.validator_value
    words = {
        "minimum": f"must be >= {bound}",
        "exclusiveMinimum": f"must be > {bound}",
        "maximum": f"must be <= {bound}",
        "exclusiveMaximum": f"must be < {bound}",
        "minItems": f"needs at least {bound} item(s)",
        "maxItems": f"allows at most {bound} item(s)",
        "uniqueItems": "must not repeat an item",
        "pattern": f"must match {bound}",
        "const": f"must be {bound!r}",
    }
    if kind == "enum":
        return f"must be one of: {', '.join(map(str, bound))}"
    if kind == "type":
        return f"must be of type {bound if isinstance(bound, str) else ' or '.join(bound)}"
    if kind in ("oneOf", "anyOf"):
        described = [s.get("description") for s in bound if isinstance(s, dict)]
        if all(described):
            return "must be " + " or ".join(described)
    return words.get(kind, error.message)


def schema_problems(config: Mapping, schema: Mapping) -> list[str]:
    """One line per schema violation, in the order of the keys (never the whole config)."""
    from jsonschema import Draft202012Validator

    problems = []
    errors = Draft202012Validator(schema).iter_errors(dict(config))
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        if error.validator in ("oneOf", "anyOf") and error.context:
            # a value of the right shape for one branch: report that branch's deepest error
            # (the item out of range), not "valid under none of the given schemas"
            deepest = max(error.context, key=lambda e: len(e.absolute_path))
            if len(deepest.absolute_path) > len(error.absolute_path):
                error = deepest
            else:
                problems.append(f"{_key(error.absolute_path)} = {_shown(error.instance)}: "
                                f"allowed: {error.schema.get('description', 'see the schema')}")
                continue
        key = _key(error.absolute_path)
        if error.validator == "additionalProperties":
            known = sorted(error.schema.get("properties", {}))
            for name in sorted(set(error.instance) - set(known)):
                where = f"{key}." if error.absolute_path else ""
                problems.append(f"unknown key {where}{name}; allowed: {', '.join(known)}")
        elif error.validator == "required":
            name = error.message.split("'")[1]
            where = f"{key}." if error.absolute_path else ""
            problems.append(f"missing key {where}{name} (every key is required)")
        else:
            problems.append(f"{key} = {_shown(error.instance)}: {_allowed(error)}")
    return problems


# ----------------------------------------------------------------------------- cross-field


def examples_for_training(dataset: str) -> int:
    """Examples a dataset's training and validation splits are cut from (test set excluded)."""
    from sngrad.data import get_spec
    from sngrad.data.registry import TRAIN_POOL

    return TRAIN_POOL[get_spec(dataset).name]


def split_sizes(config: Mapping, dataset: str) -> tuple[int, int]:
    """(training, validation) examples of ``dataset`` under the profile's ``data`` section.

    The validation split holds ``floor(val_fraction * n + 1/2)`` of the ``n`` examples (as
    :func:`sngrad.data.stratified_split` rounds); ``train_size``, when set, keeps that many of
    the rest.
    """
    n = examples_for_training(dataset)
    n_val = math.floor(config["data"]["val_fraction"] * n + 0.5)
    n_train = n - n_val
    train_size = config["data"]["train_size"]
    return (n_train if train_size is None else min(train_size, n_train)), n_val


def _run_problems(config: Mapping) -> list[str]:
    from sngrad.names import parse_run

    problems = []
    primary = config["train"]["schedule"]
    for i, run in enumerate(config["optimizers"]):
        try:
            parts = parse_run(run)
        except SngradError as err:
            problems.append(f"optimizers[{i}] = {_shown(run)}: {err}")
            continue
        if parts.schedule == primary:
            plain = parts._replace(schedule=None).name
            problems.append(f"optimizers[{i}] = {_shown(run)}: ~{primary} is the profile's own "
                            f"schedule (train.schedule); allowed: {plain!r}")
        elif parts.schedule is not None and parts.paired_base is not None and (
                parts.paired_base.name not in config["optimizers"]):
            problems.append(f"optimizers[{i}] = {_shown(run)}: its base {parts.paired_base.name!r} "
                            "(the same optimizer family at the same schedule) is not in "
                            "optimizers; allowed: add it, or drop the arm")
    if REFERENCE_RUN not in config["optimizers"]:
        problems.append(
            f"optimizers = {_shown(config['optimizers'])}: must include {REFERENCE_RUN!r} "
            "(the base of every comparison and the noise study's reference run)"
        )
    return problems


def _split_problems(config: Mapping) -> list[str]:
    problems = []
    data = config["data"]
    largest = max(config["batch_sizes"])
    for dataset in config["datasets"]:
        n = examples_for_training(dataset)
        n_val = math.floor(data["val_fraction"] * n + 0.5)
        n_train = n - n_val
        if n_val < 1 or n_train < 1:
            problems.append(
                f"data.val_fraction = {data['val_fraction']}: leaves {n_train} training and "
                f"{n_val} validation examples of {dataset}'s {n}; both need at least one"
            )
            continue
        if data["train_size"] is not None and data["train_size"] > n_train:
            problems.append(
                f"data.train_size = {data['train_size']}: {dataset} has {n_train} training "
                f"examples after the validation split; use at most that many, or null for all"
            )
            continue
        available, _ = split_sizes(config, dataset)
        if largest > available:
            cause = (
                f"data.val_fraction = {data['val_fraction']}"
                if data["train_size"] is None
                else f"data.train_size = {data['train_size']}"
            )
            problems.append(
                f"batch_sizes = {_shown(config['batch_sizes'])}: {largest} exceeds the "
                f"{available} examples of {dataset}'s training split (with {cause}); "
                f"batch sizes must be at most the training split"
            )
    return problems


def _spec_problems(config: Mapping) -> list[str]:
    from sngrad.spec import spec_from_dict

    try:
        spec_from_dict(json.loads(training_spec(config)))
    except SngradError as err:
        return [str(err)]
    return []


def _noise_problems(config: Mapping) -> list[str]:
    """The noise study needs at least one batch size: min <= max, min <= every training split."""
    noise = config["noise"]
    low, high = noise["min_batch_size"], noise["max_batch_size"]
    if low > high:
        return [f"noise.min_batch_size = {low} exceeds noise.max_batch_size = {high}; the "
                "noise study doubles the first up to the second, so it must be at most that"]
    problems = []
    for dataset in config["datasets"]:
        if not noise_batch_sizes(config, dataset):
            available, _ = split_sizes(config, dataset)
            problems.append(
                f"noise.min_batch_size = {low} exceeds the {available} examples of {dataset}'s "
                "training split; it must be at most the training split"
            )
    return problems


def rule_problems(config: Mapping) -> list[str]:
    """Problems across fields of a schema-valid profile, one line each."""
    problems = _spec_problems(config) + _run_problems(config)
    splits = _split_problems(config)
    problems += splits or _noise_problems(config)  # the noise sizes need valid splits
    return problems or resources.memory_problems(config)  # sizes need a consistent profile


def reserved_name_problem(config: Mapping, source: str, published: Mapping) -> str | None:
    """The profile name of the published study belongs to its file alone.

    ``published`` is ``config/default.yaml`` as read; a config that calls itself ``default``
    but differs from it (other than in ``resources``, which change no result) would write a
    different study into ``results/default`` and publish it into ``paper/``.
    """
    from sngrad.layout import PUBLISHING_PROFILE

    if config.get("profile") != PUBLISHING_PROFILE:
        return None
    strip = {k: v for k, v in config.items() if k != "resources"}
    if strip == {k: v for k, v in published.items() if k != "resources"}:
        return None
    return (
        f"{source}: profile = {PUBLISHING_PROFILE!r} is reserved for the unmodified "
        f"config/{PUBLISHING_PROFILE}.yaml (it publishes into paper/); name this variant, "
        "e.g. --config profile=mine"
    )


# ----------------------------------------------------------------------------- job arguments


def training_spec(config: Mapping) -> str:
    """The training spec of docs/CONTRACTS.md as JSON: ``{hidden, init_seed, **train, tune}``."""
    spec = {
        "hidden": config["model"]["hidden"],
        "init_seed": config["model"]["init_seed"],
        **config["train"],
        "tune": config["tune"],
    }
    return json.dumps(spec, sort_keys=True)


def noise_batch_sizes(config: Mapping, dataset: str) -> list[int]:
    """``noise.min_batch_size`` doubled up to ``noise.max_batch_size``, capped by
    the training split (a batch is drawn without replacement)."""
    cap = min(config["noise"]["max_batch_size"], split_sizes(config, dataset)[0])
    sizes, b = [], config["noise"]["min_batch_size"]
    while b <= cap:
        sizes.append(b)
        b *= 2
    return sizes


def noise_runs(config: Mapping) -> list[str]:
    """The tuned sngrad-on-sgd runs of the profile whose chosen alpha the noise study reads."""
    return [run for run in NOISE_VARIANTS if run in config["optimizers"]]


def reference_batch_size(config: Mapping) -> int:
    """The batch size whose tuning results set the noise study's runs (the first listed)."""
    return config["batch_sizes"][0]


# ----------------------------------------------------------------------------- command line


def cli(argv: list[str]) -> int:
    """``python -m sngrad config check FILE ...``: every problem of each profile, one a line."""
    parser = argparse.ArgumentParser(
        prog="python -m sngrad config", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check profiles as the workflow does")
    check.add_argument("files", nargs="+", metavar="FILE")
    cost = commands.add_parser("cost", help="counted training work and estimated time of a "
                               "profile (sngrad.costs)")
    cost.add_argument("profile", metavar="PROFILE", help="a name under config/ or a file")
    cost.add_argument("--no-calibrate", action="store_true", help="skip the matmul timing")
    cost.add_argument("--cores", type=int, default=None, help="cores for the wall-time estimate")
    args = parser.parse_args(argv)
    if args.command == "cost":
        from sngrad.costs import cost_command

        return cost_command(args.profile, calibrate=not args.no_calibrate, cores=args.cores)
    for path in args.files:
        load_profile(path)
        print(f"{path}: ok")
    return 0
