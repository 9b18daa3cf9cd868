"""The scope section (scope.md.j2): this profile's scale against the seed's design.

The seed's design is ``config/paper.yaml`` (the seed's network 784-1024-1024-1024-10 and
3072-... for CIFAR10, its three datasets, batch sizes 128 to 1024, 200 epochs). Both columns
are counted from the profiles with :mod:`sngrad.costs` and :func:`sngrad.profile.split_sizes`;
nothing here is measured. Per network quantities are for one dataset that both designs train
(the profile's first such dataset; without one, each design's first dataset).

For a dataset with ``N`` training examples, the profile's network on it
(:func:`sngrad.profile.architecture`; an MLP of widths ``[d_0, ..., d_L]`` shown as
``d_0-...-d_L``), ``E`` epochs and batch size ``B``: parameters (``sum_l d_{l-1} d_l + d_l``
for an MLP, :meth:`sngrad.architecture.Architecture.parameter_count`); steps per run
``E floor(N / B)``; counted
compute per run: the FLOPs of those steps for plain SGD and one seed
(:func:`sngrad.costs.cumulative_flops`, evaluation passes not included). The ratio column is
seed over profile: how many times the seed's design exceeds this profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sngrad import costs
from sngrad.architecture import Architecture
from sngrad.errors import SngradError
from sngrad.names import parse_run
from sngrad.profile import architecture, read_yaml, split_sizes
from sngrad.report.format import NA, count, fmt, number

SEED_DESIGN = Path(__file__).resolve().parents[3] / "config" / "paper.yaml"
COMPUTE_RUN = parse_run("sgd")  # the run whose counted compute per run the table shows


def network(profile: Mapping, dataset: str) -> Architecture:
    """The network of ``profile`` on ``dataset``."""
    return architecture(profile, dataset)


def scale(profile: Mapping, dataset: str) -> dict:
    """The scale of one profile on one dataset, as numbers (see the module docstring).

    Keys: network (its text, :meth:`~sngrad.architecture.Architecture.describe`:
    ``784-64-10`` for an MLP), parameters, train_examples, epochs, batch_sizes (sorted),
    steps_small and steps_large (steps per run at the smallest and the largest batch size),
    datasets, seeds (final seeds), runs (trained run names), flops_run (counted FLOPs of one
    SGD run at the smallest batch size).
    """
    try:
        net = network(profile, dataset)
        n_train, _ = split_sizes(profile, dataset)
        epochs = int(profile["train"]["epochs"])
        sizes = sorted(int(b) for b in profile["batch_sizes"])
        every = int(profile["train"].get("snapshot_every", 1))
    except (KeyError, TypeError, ValueError) as err:
        raise SngradError(f"profile {profile.get('profile', '?')}: no scale ({err})") from None
    if not sizes:
        raise SngradError(f"profile {profile.get('profile', '?')}: no batch sizes")
    small, large = sizes[0], sizes[-1]
    steps_small = epochs * costs.steps_per_epoch(n_train, small)
    return {
        "network": net.describe(),
        "parameters": costs.parameter_count(net),
        "train_examples": n_train,
        "epochs": epochs,
        "batch_sizes": sizes,
        "steps_small": steps_small,
        "steps_large": epochs * costs.steps_per_epoch(n_train, large),
        "datasets": list(profile["datasets"]),
        "seeds": len(profile["train"]["seeds"]),
        "runs": list(profile.get("optimizers", [])),
        "flops_run": costs.cumulative_flops(COMPUTE_RUN, net, n_train, small, every,
                                            steps_small),
    }


def comparison_datasets(profile: Mapping, seed: Mapping) -> tuple[str, str]:
    """(profile's dataset, seed's dataset) the per-network rows are counted on."""
    shared = [d for d in profile["datasets"] if d in seed["datasets"]]
    if shared:
        return shared[0], shared[0]
    return profile["datasets"][0], seed["datasets"][0]


def _ratio(seed_value: float, value: float) -> str:
    if not value:
        return NA
    return f"{number(seed_value / value, 3)}x"


def _sizes(sizes) -> str:
    return ", ".join(str(b) for b in sizes)


def rows(profile: Mapping, seed: Mapping) -> tuple[list[dict], dict]:
    """Table rows ``{quantity, profile, seed, ratio}`` (text) and the ratios (numbers).

    Ratios (seed over profile) are keyed parameters, train_examples, epochs, steps_small,
    steps_large, datasets, batch_sizes (count of batch sizes), seeds and flops_run.
    """
    mine, theirs = comparison_datasets(profile, seed)
    a, b = scale(profile, mine), scale(seed, theirs)
    on = mine if mine == theirs else f"{mine} / {theirs}"
    ratios = {
        key: b[key] / a[key]
        for key in ("parameters", "train_examples", "epochs", "steps_small", "steps_large",
                    "seeds", "flops_run")
    }
    ratios["datasets"] = len(b["datasets"]) / len(a["datasets"])
    ratios["batch_sizes"] = len(b["batch_sizes"]) / len(a["batch_sizes"])
    out = [
        ("network (" + on + ")", a["network"], b["network"], None),
        (f"parameters per network ({on})", count(a["parameters"]), count(b["parameters"]),
         "parameters"),
        (f"training examples ({on})", count(a["train_examples"]),
         count(b["train_examples"]), "train_examples"),
        ("epochs", str(a["epochs"]), str(b["epochs"]), "epochs"),
        ("batch sizes", _sizes(a["batch_sizes"]), _sizes(b["batch_sizes"]), "batch_sizes"),
        (f"steps per run at B = {a['batch_sizes'][0]} / {b['batch_sizes'][0]}",
         count(a["steps_small"]), count(b["steps_small"]), "steps_small"),
        (f"steps per run at B = {a['batch_sizes'][-1]} / {b['batch_sizes'][-1]}",
         count(a["steps_large"]), count(b["steps_large"]), "steps_large"),
        ("datasets", ", ".join(a["datasets"]), ", ".join(b["datasets"]), "datasets"),
        ("final seeds per run", str(a["seeds"]), str(b["seeds"]), "seeds"),
        (f"counted compute per run (`{COMPUTE_RUN}`, one seed, B = {a['batch_sizes'][0]} / "
         f"{b['batch_sizes'][0]}, {on})", f"{fmt(a['flops_run'], 3)} FLOP",
         f"{fmt(b['flops_run'], 3)} FLOP", "flops_run"),
    ]
    table = [
        {"quantity": q, "profile": p, "seed": s,
         "ratio": _ratio(ratios[k], 1.0) if k else "-"}
        for q, p, s, k in out
    ]
    return table, ratios


def report_context(config: Mapping, seed_design: str | Path = SEED_DESIGN) -> dict:
    """The ``scope`` dict of scope.md.j2.

    Keys: ``available`` (False when the seed's design or the profile's sizes cannot be read,
    with ``why``), ``rows`` (:func:`rows`), ``ratio`` (each ratio as text, "57.2"),
    ``missing_datasets`` (the seed's datasets this profile does not train), ``missing_batch_sizes``
    (the seed's batch sizes it does not train), ``profile`` (this profile's numbers as text:
    epochs, train_examples, parameters, network, batch_sizes, datasets).
    """
    path = Path(seed_design)
    if not path.is_file():
        return {"available": False, "why": f"the seed's design {path.name} is not there"}
    seed = read_yaml(path)
    try:
        table, ratios = rows(config, seed)
        mine = scale(config, comparison_datasets(config, seed)[0])
    except SngradError as err:
        return {"available": False, "why": str(err)}
    except (KeyError, IndexError, TypeError) as err:  # a profile without datasets or sizes
        return {"available": False, "why": f"the profile lacks {err}"}
    return {
        "available": True,
        "why": "",
        "rows": table,
        "ratio": {k: number(v, 3) for k, v in ratios.items()},
        "missing_datasets": [d for d in seed["datasets"] if d not in config["datasets"]],
        "missing_batch_sizes": [
            str(b) for b in seed["batch_sizes"] if b not in config["batch_sizes"]
        ],
        "profile": {
            "epochs": str(mine["epochs"]),
            "train_examples": count(mine["train_examples"]),
            "parameters": count(mine["parameters"]),
            "network": mine["network"],
            "batch_sizes": _sizes(mine["batch_sizes"]),
            "datasets": ", ".join(mine["datasets"]),
            "dataset": comparison_datasets(config, seed)[0],
        },
    }
