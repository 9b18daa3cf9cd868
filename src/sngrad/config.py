"""Experiment profiles (``config/*.yaml``): read, checked, and turned into job arguments.

A profile is complete on its own and is checked in three steps, each problem reported as one
line ``FILE: KEY = VALUE: what is allowed``, all before any job runs:

1. YAML syntax (:func:`read_yaml`): the file, line and column of the first error.
2. The JSON schema ``workflow/schemas/config.schema.yaml`` (:func:`schema_problems`): types,
   ranges, required and unknown keys; one line per problem, never a dump of the config.
3. Rules across fields (:func:`rule_problems`): the training spec as :mod:`sngrad.spec` checks
   it (ordered learning-rate range inside ``lr_bounds``, ordered positive alpha ranges,
   at least two tuning seeds, ...), valid run names (:func:`sngrad.names.parse_run`), a
   noise study only where the model is an MLP (``noise.enabled``), and splits that can feed
   every batch: with ``n`` examples available for training and validation
   (``sngrad.data``), the validation split holds ``round(val_fraction * n)`` examples and the
   training split the rest, or ``data.train_size`` of them; every batch size must fit in the
   training split.

The Snakefile calls :func:`load_profile` (or :func:`check_profile` on a config Snakemake has
already read); ``python -m sngrad config check FILE`` runs the same checks by hand, and
``python -m sngrad config cost FILE`` prints a profile's counted work and estimated time. What
a profile's values imply (split sizes, the commands' arguments) is :mod:`sngrad.profile`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sngrad import costs, resources
from sngrad.architecture import model_kind
from sngrad.errors import SngradError
from sngrad.layout import noise_enabled
from sngrad.profile import (
    DEFAULT_PROFILE,
    REFERENCE_RUN,
    architecture,
    examples_for_training,
    noise_batch_sizes,
    read_yaml,
    split_sizes,
    training_spec,
)

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
_SHOWN = 60  # characters of a value shown in a message


class ProfileError(SngradError):
    """A profile that fails its checks; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------------------- reading


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


def _model_problems(config: Mapping) -> list[str]:
    """The network must fit each dataset's examples (a kind's input shape, pooled sizes)."""
    problems = []
    for dataset in config["datasets"]:
        try:
            architecture(config, dataset)
        except SngradError as err:
            problems.append(f"{err} (dataset {dataset})")
    return problems


def _noise_model_problems(config: Mapping) -> list[str]:
    """A noise study asked of a model other than an MLP: one line naming what is allowed."""
    kind = model_kind(config["model"])
    if not noise_enabled(config) or kind == "mlp":
        return []
    return [f"noise.enabled: the noise study measures MLPs only (its exact per-layer passes "
            f"are written for dense layers), not a {kind} model; allowed for this model: "
            "noise: {enabled: false}"]


def _noise_problems(config: Mapping) -> list[str]:
    """The noise study needs at least one batch size: min <= max, min <= every training split;
    nothing to check when the profile does not run it."""
    if not noise_enabled(config):
        return []
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
    problems = (_spec_problems(config) + _model_problems(config) + _run_problems(config)
                + _noise_model_problems(config))
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


# ----------------------------------------------------------------------------- config cost


def interactive() -> bool:
    """Whether to ask before a long profile: a terminal on stdin, not CI, not Snakemake."""
    import os
    import sys

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return False
    if any(k.startswith("SNAKEMAKE") for k in os.environ) or "snakemake" in sys.modules:
        return False
    return sys.stdin is not None and sys.stdin.isatty()


def cost_command(profile_arg: str, *, calibrate: bool = True, cores: int | None = None,
                 ask: bool = True) -> int:
    """``config cost PROFILE``: print :func:`sngrad.costs.cost_report`'s table; above
    :data:`sngrad.costs.CONFIRM_CORE_HOURS` ask on an interactive terminal (exit status 1 when
    the answer is not yes)."""
    import os

    path = Path(profile_arg)
    if not path.is_file() and (Path("config") / f"{profile_arg}.yaml").is_file():
        path = Path("config") / f"{profile_arg}.yaml"  # a profile's name
    profile = load_profile(path)
    network = architecture(profile, profile["datasets"][0])
    rate = costs.calibrate_flops(network, profile["batch_sizes"][0]) if calibrate else None
    overhead = costs.calibrate_step_overhead(profile) if calibrate else None
    try:
        default = read_yaml(DEFAULT_PROFILE)
    except SngradError:
        default = None  # not run from the repository: no default to scale the benchmark by
    text, core_hours = costs.cost_report(profile, rate, cores or os.cpu_count() or 1, overhead,
                                         default)
    print(text)
    if ask and core_hours > costs.CONFIRM_CORE_HOURS and interactive():
        answer = input(f"{core_hours:,.0f} core-hours exceeds {costs.CONFIRM_CORE_HOURS:g}: "
                       "run this profile? [y/N] ")
        return 0 if answer.strip().lower() in ("y", "yes") else 1
    return 0


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
        return cost_command(args.profile, calibrate=not args.no_calibrate, cores=args.cores)
    for path in args.files:
        load_profile(path)
        print(f"{path}: ok")
    return 0
