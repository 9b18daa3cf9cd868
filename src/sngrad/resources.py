"""What a profile asks of the machine, checked before any job: memory per job and total work.

Memory of a tuning or training job (a lower bound: what the arrays alone take)
    A job trains K runs side by side in one vmapped program (:mod:`sngrad.train.engine`):
    K = (initial learning rates x second-axis points x tuning seeds) for a tuning job, K = the
    final seeds for a training job. With the network widths ``[d_0, ..., d_L]``,
    ``P = sum_l (d_{l-1} + 1) d_l`` parameters and the batch size B, float32 (4 bytes) arrays
    take at least::

        4 K (STATE_COPIES P + 2 B sum_{l>=1} d_l + EVAL_CHUNK sum_{l>=1} d_l)
          + 4 (n_train + n_val) d_0 + BASELINE_MB

    (parameters, gradient and update of every run; each layer's activations of a batch kept
    for the backward pass and again squared for the moments; one evaluation chunk; the
    splits on the device; the interpreter with jax loaded). A job whose lower bound exceeds
    its ``resources.mem_mb`` or this machine's memory cannot run, and the check names the key
    that drives the size: the limit itself (or ``data.train_size``) if the splits and the
    interpreter alone do not fit, ``model.hidden`` if one run's parameters do not, else
    ``batch_sizes`` if one run's activations do not, else the key that multiplies K.

Work
    The counted FLOPs of :mod:`sngrad.costs` of every job of the profile: the initial tuning
    round (extension rounds come on top), the final training runs and the noise study's
    per-example moments at the reference checkpoints. A profile far above the default's work
    gets a warning with the time that implies at the default's pace, which is its budget.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping

MB = 2**20
STATE_COPIES = 3  # parameters, gradient, updated parameters of every run
BASELINE_MB = 200  # a python with jax loaded, measured on the CPU backend (jax 0.10)
EVAL_CHUNK = 1024  # examples per evaluation step (sngrad.train.engine.EVAL_CHUNK)
NOISE_CHECKPOINTS = 5  # init, epoch1, p25, p50, p100 (sngrad.train.commands)
WORK_WARNING_RATIO = 10.0
DEFAULT_BUDGET_MIN = 60.0  # the default profile's budget on 2 cores (config/default.yaml)


def machine_mb() -> float | None:
    """Physical memory of this machine in MB (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / MB
    except (ValueError, OSError, AttributeError):
        return None


def widths(config: Mapping, dataset: str) -> list[int]:
    from sngrad.data import get_spec

    spec = get_spec(dataset)
    return [spec.feature_dim, *config["model"]["hidden"], spec.num_classes]


def parameters(layer_widths: list[int]) -> int:
    return sum((a + 1) * b for a, b in itertools.pairwise(layer_widths))


def job_mb(layer_widths: list[int], batch: int, runs: int, examples: int) -> float:
    """The lower bound of the module docstring, in MB."""
    units = sum(layer_widths[1:])
    per_run = STATE_COPIES * parameters(layer_widths) + (2 * batch + EVAL_CHUNK) * units
    return 4 * (runs * per_run + examples * layer_widths[0]) / MB + BASELINE_MB


def _tune_factors(config: Mapping) -> dict[str, int]:
    """The keys that multiply a tuning job's K, with their factor."""
    from sngrad.config import training_spec
    from sngrad.spec import parse_spec
    from sngrad.train.protocol import lr_count

    tune = parse_spec(training_spec(config)).tune
    return {"tune.lr_per_decade": lr_count(tune), "tune.second_points": tune.second_points,
            "tune.seeds": len(tune.seeds)}


def _shown(config: Mapping, key: str):
    value = config
    for part in key.split("."):
        value = value[part]
    return max(value) if key == "batch_sizes" else value


def memory_problems(config: Mapping, machine: float | None = None) -> list[str]:
    """One line per job kind that cannot fit; empty when every job fits."""
    from sngrad.config import split_sizes

    machine = machine_mb() if machine is None else machine
    tune = _tune_factors(config)
    seeds = len(config["train"]["seeds"])
    jobs = {"tune": (math.prod(tune.values()), tune), "train": (seeds, {"train.seeds": seeds})}
    batch = max(config["batch_sizes"])
    problems = []
    for stage, (runs, factors) in jobs.items():
        limit = config["resources"]["mem_mb"][stage]
        for dataset in config["datasets"]:
            layers = widths(config, dataset)
            examples = sum(split_sizes(config, dataset))
            need = job_mb(layers, batch, runs, examples)
            over = [(f"resources.mem_mb.{stage} = {limit}", limit)]
            if machine is not None:
                over.append((f"this machine's {machine:.0f} MB", machine))
            exceeded = [text for text, mb in over if need > mb]
            if not exceeded:
                continue
            smallest = min(mb for _, mb in over)
            if job_mb(layers, batch, 0, examples) > smallest:  # not even the data fits
                key = f"resources.mem_mb.{stage}" if limit == smallest else "data.train_size"
            elif job_mb(layers, 1, 1, examples) > smallest:
                key = "model.hidden"
            elif job_mb(layers, batch, 1, examples) > smallest:
                key = "batch_sizes"
            else:
                key = max(factors, key=factors.get)
            problems.append(
                f"{key} = {_shown(config, key)}: a {stage} job on {dataset} needs at least "
                f"{need:,.0f} MB ({runs:,} vmapped run(s) of {parameters(layers):,} parameters, "
                f"batch {batch}), above {' and '.join(exceeded)}; allowed: a network, batch "
                f"size and run count that fit, or a larger resources.mem_mb.{stage} on a "
                "machine that has it"
            )
            break  # one line per job kind: the first dataset that does not fit
    return problems


def work_flops(config: Mapping) -> float:
    """Counted FLOPs of the profile's jobs (see the module docstring)."""
    from sngrad import costs
    from sngrad.config import noise_batch_sizes, split_sizes

    factors = _tune_factors(config)
    trials = math.prod(factors.values())
    train = config["train"]
    every = train["snapshot_every"]
    total = 0.0
    for dataset in config["datasets"]:
        layers = widths(config, dataset)
        n_train = split_sizes(config, dataset)[0]
        for run in config["optimizers"]:
            for batch in config["batch_sizes"]:
                epoch = costs.epoch_flops(run, layers, n_train, batch, every)
                total += (trials + len(train["seeds"])) * train["epochs"] * epoch
        moments = sum(costs.step_flops("sgd+sngrad1", layers, b)
                      for b in noise_batch_sizes(config, dataset))
        total += NOISE_CHECKPOINTS * config["noise"]["batches"] * moments
    return total


def work_warnings(config: Mapping, source: str, default: Mapping) -> list[str]:
    """A line when the profile's counted work is far above the default profile's."""
    ours, theirs = work_flops(config), work_flops(default)
    ratio = ours / theirs
    if ratio < WORK_WARNING_RATIO:
        return []
    hours = ratio * DEFAULT_BUDGET_MIN / 60
    return [
        f"{source}: about {ratio:,.0f} times the counted work of the default profile "
        f"({ours:.2g} FLOP against {theirs:.2g}); at the default's pace (its "
        f"{DEFAULT_BUDGET_MIN:.0f}-minute budget) that is about {hours:,.0f} h; check "
        "train.epochs, the seeds, the tuning grid and noise.batches"
    ]


def warn(config: Mapping, source: str) -> None:
    """Print the work warnings of a profile that passed its checks (stderr, one a line)."""
    import sys

    from sngrad.config import DEFAULT_PROFILE, read_yaml
    from sngrad.errors import SngradError

    try:
        default = read_yaml(DEFAULT_PROFILE)
    except (OSError, SngradError):
        return  # not run from the repository: no default to compare with
    for line in work_warnings(config, source, default):
        print(f"sngrad: warning: {line}", file=sys.stderr)
