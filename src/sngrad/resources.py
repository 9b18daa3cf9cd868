"""What a profile asks of the machine, checked before any job: memory per job and total work.

Memory of a tuning or training job (a lower bound: what the arrays alone take)
    A job trains K runs side by side in one vmapped program (:mod:`sngrad.train.engine`):
    K = (initial learning rates x second-axis points x tuning seeds) for a tuning job, K = the
    final seeds for a training job. With the network's P parameters
    (:meth:`sngrad.architecture.Architecture.parameter_count`; ``sum_l (d_{l-1} + 1) d_l``
    for an MLP of widths ``[d_0, ..., d_L]``), its U activations of one example over all
    layers' outputs (:meth:`~sngrad.architecture.Architecture.unit_count`; ``sum_{l>=1} d_l``
    for an MLP), its D inputs per example (the product of its input shape; ``d_0``) and the
    batch size B, float32 (4 bytes) arrays take at least::

        4 K (STATE_COPIES P + 2 B U + EVAL_CHUNK U) + 4 (n_train + n_val) D + BASELINE_MB

    (parameters, gradient and update of every run; each layer's activations of a batch kept
    for the backward pass and again squared for the moments; one evaluation chunk; the
    splits on the device; the interpreter with jax loaded). A job whose lower bound exceeds
    its ``resources.mem_mb`` or this machine's memory cannot run; with an ``accelerator``
    (a GPU, where the arrays live), ``accelerator.jobs`` such jobs at once, without the
    interpreter's BASELINE_MB, must also fit its ``accelerator.memory_mb``. The check names
    the key that drives the size: the limit itself (or ``data.train_size``) if the splits and the
    interpreter alone do not fit, the keys that shape the network (:func:`network_keys`:
    ``model.hidden`` of an MLP, ``model.channels``, ``model.kernel`` and ``model.dense`` of a
    cnn, ``model.kind`` of a fixed network) if one run at B = 1 does not, else
    ``batch_sizes`` if one run's activations do not, else the key that multiplies K.

Work
    Two counts of every job of the profile, both those of `config cost`
    (:func:`sngrad.costs.profile_stages`): the counted FLOPs (tuning's round 0 and refinement,
    extension rounds on top; the final training runs; the reference run; the noise study's
    per-example moments at the reference checkpoints), and the run-steps, one per training
    step of each of a job's K runs. A small network's time goes to the per-step work of the
    program (gathering the batch, the update, the diagnostics' branch) rather than to matrix
    products, so its time follows the run-steps where a large one's follows the FLOPs. A
    profile far above the default's work in either count gets a warning, with the time that
    the larger ratio implies at the default's pace (its budget). The benchmark (`make bench`)
    is timed, not counted: its repeats x networks x batch sizes against the default's give a
    warning of its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from sngrad import costs
from sngrad.architecture import MODEL_KEYS, as_architecture, model_kind
from sngrad.profile import DEFAULT_PROFILE, architecture, read_yaml, split_sizes

MB = 2**20
STATE_COPIES = 3  # parameters, gradient, updated parameters of every run
BASELINE_MB = 200  # a python with jax loaded, measured on the CPU backend (jax 0.10)
EVAL_CHUNK = 1024  # examples per evaluation step (sngrad.train.engine.EVAL_CHUNK)
WORK_WARNING_RATIO = 10.0
DEFAULT_BUDGET_MIN = 60.0  # the default profile's budget on 2 cores (config/default.yaml)


def machine_mb() -> float | None:
    """Physical memory of this machine in MB (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / MB
    except (ValueError, OSError, AttributeError):
        return None


def job_mb(net: costs.Network, batch: int, runs: int, examples: int) -> float:
    """The lower bound of the module docstring, in MB, of a network (an Architecture or an
    MLP's widths)."""
    net = as_architecture(net)
    units = net.unit_count()
    per_run = STATE_COPIES * net.parameter_count() + (2 * batch + EVAL_CHUNK) * units
    return 4 * (runs * per_run + examples * math.prod(net.input_shape)) / MB + BASELINE_MB


def network_keys(config: Mapping) -> list[str]:
    """The profile keys that size its network, as the memory check names them."""
    kind = model_kind(config["model"])
    return [f"model.{key}" for key in MODEL_KEYS[kind]] or ["model.kind"]


def _tune_factors(config: Mapping) -> dict[str, int]:
    """The keys that multiply the largest tuning round's K (round 0 of the run with the most
    tuned axes), with their factor."""
    from sngrad.names import parse_run
    from sngrad.spec import tune_spec
    from sngrad.train.protocol import lr_count, tuned_axes

    tune = tune_spec(config["tune"])
    extra = max(len(tuned_axes(parse_run(run), tune)) - 1 for run in config["optimizers"])
    return {"tune.lr_per_decade": lr_count(tune), "tune.axis_points": tune.axis_points ** extra,
            "tune.seeds": len(tune.seeds)}


def _shown(config: Mapping, key: str):
    value = config
    for part in key.split("."):
        value = value[part]
    return max(value) if key == "batch_sizes" else value


def _named(config: Mapping, keys: list[str]) -> str:
    """``key = value`` of each key, comma-separated."""
    return ", ".join(f"{key} = {_shown(config, key)}" for key in keys)


def memory_problems(config: Mapping, machine: float | None = None) -> list[str]:
    """One line per job kind that cannot fit; empty when every job fits."""

    machine = machine_mb() if machine is None else machine
    tune = _tune_factors(config)
    seeds = len(config["train"]["seeds"])
    jobs = {"tune": (math.prod(tune.values()), tune), "train": (seeds, {"train.seeds": seeds})}
    batch = max(config["batch_sizes"])
    device = config.get("accelerator")
    problems = []
    for stage, (runs, factors) in jobs.items():
        limit = config["resources"]["mem_mb"][stage]
        for dataset in config["datasets"]:
            layers = architecture(config, dataset)
            examples = sum(split_sizes(config, dataset))
            need = job_mb(layers, batch, runs, examples)
            over = [(f"resources.mem_mb.{stage} = {limit}", limit)]
            if machine is not None:
                over.append((f"this machine's {machine:.0f} MB", machine))
            exceeded = [text for text, mb in over if need > mb]
            if device is not None:
                on_device = device["jobs"] * (need - BASELINE_MB)
                if on_device > device["memory_mb"]:
                    problems.append(
                        f"accelerator.memory_mb = {device['memory_mb']}: {device['jobs']} "
                        f"{stage} job(s) on {dataset} at once need at least {on_device:,.0f} MB "
                        f"of {device['name']} ({runs:,} vmapped run(s) of "
                        f"{layers.parameter_count():,} parameters, batch {batch}, each); allowed: "
                        "fewer accelerator.jobs, or a network, batch size and run count that "
                        "fit"
                    )
                    break
            if not exceeded:
                continue
            smallest = min(mb for _, mb in over)
            if job_mb(layers, batch, 0, examples) > smallest:  # not even the data fits
                keys = [f"resources.mem_mb.{stage}" if limit == smallest else "data.train_size"]
            elif job_mb(layers, 1, 1, examples) > smallest:
                keys = network_keys(config)
            elif job_mb(layers, batch, 1, examples) > smallest:
                keys = ["batch_sizes"]
            else:
                keys = [max(factors, key=factors.get)]
            problems.append(
                f"{_named(config, keys)}: a {stage} job on {dataset} needs at least "
                f"{need:,.0f} MB ({runs:,} vmapped run(s) of {layers.parameter_count():,} "
                f"parameters, "
                f"batch {batch}), above {' and '.join(exceeded)}; allowed: a network, batch "
                f"size and run count that fit, or a larger resources.mem_mb.{stage} on a "
                "machine that has it"
            )
            break  # one line per job kind: the first dataset that does not fit
    return problems


def work(config: Mapping) -> tuple[float, int]:
    """(counted FLOPs, run-steps) of the profile's jobs, as `config cost` counts them
    (:func:`sngrad.costs.profile_stages`; tuning: round 0 and the refinement, extension rounds
    not counted)."""
    stages = costs.profile_stages(config)
    return sum(s.flops for s in stages), sum(s.run_steps for s in stages)


def work_warnings(config: Mapping, source: str, default: Mapping) -> list[str]:
    """A line when the profile's training work (FLOPs or run-steps, the larger ratio) is far
    above the default profile's, and one when its benchmark is."""
    (ours_flops, ours_steps), (their_flops, their_steps) = work(config), work(default)
    flops, steps = (ours_flops, their_flops), (ours_steps, their_steps)
    ratio, (ours, theirs), unit = max(
        (flops[0] / flops[1], flops, "counted work"),
        (steps[0] / steps[1], steps, "training steps"),
        key=lambda found: found[0],
    )
    lines = []
    if ratio >= WORK_WARNING_RATIO:
        hours = ratio * DEFAULT_BUDGET_MIN / 60
        amount = f"{ours:.2g} FLOP against {theirs:.2g}" if unit == "counted work" else (
            f"{ours:,} run-steps against {theirs:,}")
        device = config.get("accelerator")
        if device is not None:
            gpu = costs.GPU_SUSTAINED_FLOPS
            planned = (f"; planned for {device['name']}: about {flops[0] / gpu / 60:,.0f} min "
                       f"of counted work at an assumed sustained {gpu / 1e12:g} TFLOP/s")
        else:
            planned = ""
        lines.append(
            f"{source}: about {ratio:,.0f} times the {unit} of the default profile "
            f"({amount}); at the default's pace (its {DEFAULT_BUDGET_MIN:.0f}-minute budget) "
            f"that is about {hours:,.0f} h on this CPU{planned}; check train.epochs, the "
            "seeds, the tuning grid and noise.batches"
        )
    bench = costs.benchmark_repeats(config) / costs.benchmark_repeats(default)
    if bench >= WORK_WARNING_RATIO:
        lines.append(
            f"{source}: the benchmark (`make bench`, not part of a run) times about {bench:,.0f} "
            f"times the default's repeats x networks x batch sizes; at the default's "
            f"{costs.DEFAULT_BENCHMARK_MIN:.0f} minutes that is about "
            f"{costs.benchmark_minutes(config, default) / 60:,.1f} h; check benchmark.repeats"
        )
    return lines


def warn(config: Mapping, source: str) -> None:
    """Print the work warnings of a profile that passed its checks (stderr, one a line)."""
    import sys

    from sngrad.errors import SngradError

    try:
        default = read_yaml(DEFAULT_PROFILE)
    except (OSError, SngradError):
        return  # not run from the repository: no default to compare with
    for line in work_warnings(config, source, default):
        print(f"sngrad: warning: {line}", file=sys.stderr)
