"""What a profile's values imply, read once: its file, its splits' sizes, the arguments of its
jobs.

A profile (``config/*.yaml``) is checked by :mod:`sngrad.config`; the quantities here follow
from its values and are what the workflow, the cost model (:mod:`sngrad.costs`), the resource
checks (:mod:`sngrad.resources`) and the report compute from it, each in one place: the
sizes of a dataset's training and validation splits (:func:`split_sizes`), the training spec
the tuning and training commands take (:func:`training_spec`), the noise study's batch sizes
and tuned runs, and the reference run's batch size. Of the package it imports only
its errors and the dataset registry, so every stage above it can read a profile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import yaml

from sngrad.errors import SngradError

DEFAULT_PROFILE = "config/default.yaml"  # what a plain `snakemake` runs (and publishes)
NOISE_VARIANTS = ("sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3")  # tuned runs the noise study reads
REFERENCE_RUN = "sgd"  # its chosen setting trains the noise study's reference run
NOISE_SUMMARY_BATCH_SIZE = 128  # the noise summary's per-batch figures are at this B (or nearest)
SEED_STUDY_BATCH_SIZES = (128, 1024)  # the batch sizes of the seed's original study


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



def examples_for_training(dataset: str) -> int:
    """Examples a dataset's training and validation splits are cut from (test set excluded)."""
    from sngrad.data.registry import TRAIN_POOL, get_spec

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



# ----------------------------------------------------------------------------- job arguments


def architecture(config: Mapping, dataset: str):
    """The :class:`sngrad.architecture.Architecture` the profile trains on ``dataset``."""
    from sngrad.data.registry import get_spec

    spec = get_spec(dataset)
    return data_architecture(config["model"], dataset, spec.feature_dim, spec.num_classes)


def data_architecture(model: Mapping, dataset: str, feature_dim: int, classes: int):
    """The network a ``model:`` section builds on a dataset's prepared data of ``feature_dim``
    features: an MLP's input width is the data's (a test's toy data need not have the
    registry's), another kind's image shape the registry's."""
    from sngrad import architecture

    if architecture.model_kind(model) == "mlp":
        return architecture.build(model, (feature_dim,), classes)
    from sngrad.data.registry import get_spec

    return architecture.build(model, get_spec(dataset).shape, classes)


def training_spec(config: Mapping) -> str:
    """The training spec of docs/CONTRACTS.md as JSON: ``{hidden, init_seed, **train, tune}``
    for an MLP, ``{model, init_seed, **train, tune}`` for another kind (``model`` the
    profile's section without ``init_seed``)."""
    model = dict(config["model"])
    init_seed = model.pop("init_seed")
    if model.get("kind", "mlp") == "mlp":
        network = {"hidden": model["hidden"]}
    else:
        network = {"model": model}
    spec = {**network, "init_seed": init_seed, **config["train"], "tune": config["tune"]}
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
