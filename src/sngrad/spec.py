"""The training spec (docs/CONTRACTS.md) and the chosen hyper-parameters (best.json), checked.

The spec is plain JSON, given on the command line as a string or as ``@path/to/spec.json``.
The workflow builds it from a profile as ``{"hidden", "init_seed", **train, "tune": tune}``
(an MLP; another network is ``"model": {"kind": ..., its keys}`` in place of ``"hidden"``, the
profile's ``model:`` section without ``init_seed``, :mod:`sngrad.architecture`)::

    {"hidden": [64], "init_seed": 0,
     "epochs": 20, "seeds": [1, 2, 3], "backend": "dense", "schedule": "constant",
     "checkpoint_every": 5, "diverge_loss": 1000.0, "snapshot_every": 1,
     "tune": {"seeds": [100, 101], "lr_min": 0.001, "lr_max": 1.0, "lr_per_decade": 2,
              "lr_bounds": [1e-5, 100.0], "axis_points": 5,
              "one_minus_momentum": [0.01, 0.3], "one_minus_momentum_bounds": [0.001, 1.0],
              "alpha": {"I": [0.1, 10.0], "II": [0.3, 30.0], "III": [0.03, 1.0]},
              "alpha_bounds": {"I": [0.001, 1000.0], "II": [0.01, 1000.0],
                               "III": [0.001, 10.0]}}}

``tune.one_minus_momentum`` is a range ``[low, high]`` (1 - m tuned by every momentum-base
run) or a number (m = 1 - value for every momentum-base run); ``axis_points`` is the number of
initial grid points of alpha and 1 - m. The protocol is :mod:`sngrad.train.protocol`.

This module has no defaults of its own: the profiles are the one place where values are
chosen, so every key is required. A missing or unknown key, a wrong type or an out-of-range
value is a one-line :class:`SngradError` naming the key and what is allowed.
``checkpoint_every = 0`` means never; ``snapshot_every`` (epochs between control-variate
snapshots) is read only by ``+cv`` / ``+svrg`` optimizers.

:func:`read_json_arg` is the one parser of "JSON text or ``@file``" arguments in the package.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sngrad.architecture import check_model
from sngrad.errors import SngradError, choice_error
from sngrad.names import BACKENDS, SCHEDULES, VARIANTS

MAX_SEED = 2**32 - 1

TRAIN_KEYS = ("hidden", "init_seed", "epochs", "seeds", "backend", "schedule",
              "checkpoint_every", "diverge_loss", "snapshot_every", "tune")
TUNE_KEYS = ("seeds", "lr_min", "lr_max", "lr_per_decade", "lr_bounds", "axis_points",
             "one_minus_momentum", "one_minus_momentum_bounds", "alpha", "alpha_bounds")
MIN_AXIS_POINTS = 3  # an interior point from the start; the profiles use 5


@dataclass(frozen=True)
class TuneSpec:
    seeds: tuple[int, ...]
    lr_min: float
    lr_max: float
    lr_per_decade: int
    lr_bounds: tuple[float, float]
    axis_points: int
    one_minus_momentum: float | tuple[float, float]  # fixed 1 - m, or the tuned range
    one_minus_momentum_bounds: tuple[float, float]
    alpha: dict[str, tuple[float, float]]  # variant -> scale-free (low, high)
    alpha_bounds: dict[str, tuple[float, float]]  # variant -> hard bounds of the search


@dataclass(frozen=True)
class TrainSpec:
    hidden: tuple[int, ...]
    init_seed: int
    epochs: int
    seeds: tuple[int, ...]
    backend: str
    schedule: str
    checkpoint_every: int
    diverge_loss: float
    snapshot_every: int
    tune: TuneSpec
    # a network other than the MLP: its ``model:`` section without init_seed (hidden is then
    # empty); None for the MLP, whose JSON keeps its one key "hidden"
    model: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON data (lists, not tuples): ``parse_spec`` of it is ``self``."""
        data = json.loads(json.dumps(asdict(self)))
        if self.model is None:
            del data["model"]
        else:
            del data["hidden"]
        return data

    def model_section(self) -> dict[str, Any]:
        """The profile's ``model:`` section this spec came from (what
        :func:`sngrad.architecture.build` takes)."""
        if self.model is None:
            return {"hidden": list(self.hidden), "init_seed": self.init_seed}
        return {**self.model, "init_seed": self.init_seed}


# ----------------------------------------------------------------------------- field checks


def _int(where: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SngradError(f"{where} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise SngradError(f"{where} must be {allowed}, got {value}")
    return value


def _float(where: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SngradError(f"{where} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        bound = " > 0" if positive else ""
        raise SngradError(f"{where} must be a finite number{bound}, got {value}")
    return value


def _range(where: str, value: Any, *, high: float | None = None) -> tuple[float, float]:
    """An ordered pair ``[low, high]`` of positive numbers (at most ``high`` if given)."""
    if not isinstance(value, list) or len(value) != 2:
        raise SngradError(f"{where} must be a list [low, high] of two numbers, got {value!r}")
    lo, hi = (_float(f"{where}[{i}]", v, positive=True) for i, v in enumerate(value))
    if lo > hi:
        raise SngradError(f"{where} must be ordered low <= high, got [{lo}, {hi}]")
    if high is not None and hi > high:
        raise SngradError(f"{where} must lie in (0, {high}], got [{lo}, {hi}]")
    return lo, hi


def _seeds(where: str, value: Any, *, at_least: int = 1) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) < at_least:
        raise SngradError(
            f"{where} must be a list of at least {at_least} integer seed(s), got {value!r}"
        )
    seeds = tuple(_int(f"{where}[{i}]", s, low=0, high=MAX_SEED) for i, s in enumerate(value))
    if len(set(seeds)) != len(seeds):
        raise SngradError(f"{where} must not repeat a seed, got {list(seeds)}")
    return seeds


def _keys(where: str, given: Any, allowed: tuple[str, ...]) -> dict:
    """``given`` as a dict with exactly the keys ``allowed`` (none missing, none unknown)."""
    if not isinstance(given, dict):
        raise SngradError(f"{where or 'the training spec'} must be a JSON object, got "
                          f"{type(given).__name__}")
    extra = sorted(set(given) - set(allowed))
    if extra:
        raise SngradError(f"unknown key {where}{extra[0]!r} in the training spec; valid: "
                          f"{', '.join(allowed)}")
    missing = [k for k in allowed if k not in given]
    if missing:
        raise SngradError(f"the training spec lacks key {where}{missing[0]!r}; every key is "
                          f"required: {', '.join(allowed)}")
    return given


def tune_spec(raw: Any) -> TuneSpec:
    """Check a decoded ``tune`` section (every key required)."""
    t = _keys("tune.", raw, TUNE_KEYS)
    lr_min = _float("tune.lr_min", t["lr_min"], positive=True)
    lr_max = _float("tune.lr_max", t["lr_max"], positive=True)
    if not lr_min < lr_max:
        raise SngradError(f"tune.lr_min ({lr_min}) must be < tune.lr_max ({lr_max})")
    per_decade = _int("tune.lr_per_decade", t["lr_per_decade"], low=2)
    if math.log10(lr_max / lr_min) * per_decade < 1 - 1e-9:
        raise SngradError(
            f"tune.lr_min..lr_max ({lr_min}..{lr_max}) must span at least one grid step "
            f"(1/{per_decade} decade)"
        )
    bounds = _range("tune.lr_bounds", t["lr_bounds"])
    if not bounds[0] <= lr_min or not lr_max <= bounds[1]:
        raise SngradError(
            f"tune.lr_bounds {list(bounds)} must contain [lr_min, lr_max] = [{lr_min}, {lr_max}]"
        )
    alpha = _per_variant("tune.alpha", t["alpha"])
    alpha_bounds = _per_variant("tune.alpha_bounds", t["alpha_bounds"])
    for v in VARIANTS:
        _within(f"tune.alpha_bounds.{v}", alpha_bounds[v], f"tune.alpha.{v}", alpha[v])
    m_bounds = _range("tune.one_minus_momentum_bounds", t["one_minus_momentum_bounds"],
                      high=1.0)
    m_raw = t["one_minus_momentum"]
    if isinstance(m_raw, list):
        m = _range("tune.one_minus_momentum", m_raw, high=1.0)
        if not m[0] < m[1]:
            raise SngradError(f"tune.one_minus_momentum {m_raw} must have low < high; a "
                              "fixed momentum is written as one number")
        _within("tune.one_minus_momentum_bounds", m_bounds, "tune.one_minus_momentum", m)
    else:
        m = _float("tune.one_minus_momentum", m_raw, positive=True)
        if m > 1:
            raise SngradError(f"tune.one_minus_momentum must lie in (0, 1], got {m}")
    for v in VARIANTS:
        if not alpha[v][0] < alpha[v][1]:
            raise SngradError(f"tune.alpha.{v} {list(alpha[v])} must have low < high")
    return TuneSpec(
        seeds=_seeds("tune.seeds", t["seeds"], at_least=2),
        lr_min=lr_min,
        lr_max=lr_max,
        lr_per_decade=per_decade,
        lr_bounds=bounds,
        axis_points=_int("tune.axis_points", t["axis_points"], low=MIN_AXIS_POINTS),
        one_minus_momentum=m,
        one_minus_momentum_bounds=m_bounds,
        alpha=alpha,
        alpha_bounds=alpha_bounds,
    )


def _per_variant(where: str, value: Any) -> dict[str, tuple[float, float]]:
    if not isinstance(value, dict) or sorted(value) != sorted(VARIANTS):
        raise SngradError(f"{where} must be an object with keys I, II, III, got {value!r}")
    return {v: _range(f"{where}.{v}", value[v]) for v in VARIANTS}


def _within(where: str, bounds: tuple[float, float], what: str, span: tuple[float, float]):
    if not bounds[0] <= span[0] or not span[1] <= bounds[1]:
        raise SngradError(f"{where} {list(bounds)} must contain {what} {list(span)}")


def _hidden(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise SngradError(f"spec key 'hidden' must be a non-empty list of layer widths, got "
                          f"{value!r}")
    return tuple(_int(f"hidden[{i}]", h, low=1) for i, h in enumerate(value))


def _model(value: Any) -> dict[str, Any]:
    """A non-MLP ``model`` (an MLP is written as ``hidden``, so that its spec has one form)."""
    if not isinstance(value, dict):
        raise SngradError(f"spec key 'model' must be a JSON object, got {value!r}")
    if "init_seed" in value or value.get("kind", "mlp") == "mlp":
        raise SngradError("spec key 'model' holds a network other than the MLP, without "
                          "init_seed (a key of its own); an MLP is given as 'hidden'")
    problem = check_model(value)
    if problem:
        raise SngradError(f"spec key 'model': {problem}")
    return value


def spec_from_dict(raw: Any) -> TrainSpec:
    """Check a decoded spec (every key required, see the module docstring)."""
    network = "model" if isinstance(raw, dict) and "model" in raw else "hidden"
    s = _keys("", raw, tuple(network if k == "hidden" else k for k in TRAIN_KEYS))
    hidden, model = (), None
    if network == "model":
        model = _model(s["model"])
    else:
        hidden = _hidden(s["hidden"])
    if s["backend"] not in BACKENDS:
        raise choice_error("backend", s["backend"], BACKENDS)
    if s["schedule"] not in SCHEDULES:
        raise choice_error("schedule", s["schedule"], SCHEDULES)
    return TrainSpec(
        hidden=hidden,
        init_seed=_int("init_seed", s["init_seed"], low=0, high=MAX_SEED),
        epochs=_int("epochs", s["epochs"], low=1),
        seeds=_seeds("seeds", s["seeds"]),
        backend=s["backend"],
        schedule=s["schedule"],
        checkpoint_every=_int("checkpoint_every", s["checkpoint_every"], low=0),
        diverge_loss=_float("diverge_loss", s["diverge_loss"], positive=True),
        snapshot_every=_int("snapshot_every", s["snapshot_every"], low=1),
        tune=tune_spec(s["tune"]),
        model=model,
    )


def read_json_arg(text: str, what: str) -> Any:
    """JSON from a command-line string, or from a file when the text is ``@path``.

    Errors are one line naming ``what``, the source (command line or file) and the problem.
    """
    source = "the command line"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise SngradError(f"cannot read {what} file {path}: {err.strerror}") from None
        source = str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SngradError(f"{what} from {source} is not valid JSON: {err}") from None


def parse_spec(text: str | dict) -> TrainSpec:
    """A spec from a JSON string, ``@file``, or an already decoded dict."""
    raw = text if isinstance(text, dict) else read_json_arg(text, "training spec")
    return spec_from_dict(raw)


# ----------------------------------------------------------------------------- best.json


@dataclass(frozen=True)
class Hparams:
    """The chosen setting of a tuning run (raw units); all_diverged means there is none."""

    learning_rate: float | None
    momentum: float | None
    alpha: float | None
    all_diverged: bool


def load_hparams(path: str | Path, run: str, batch_size: int) -> Hparams:
    """Read best.json written by ``tune`` and check it belongs to this run / batch size."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise SngradError(f"cannot read hparams file {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise SngradError(f"hparams file {path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise SngradError(f"hparams file {path} must hold a JSON object")
    for key, expected in (("run", run), ("batch_size", batch_size)):
        if raw.get(key) != expected:
            raise SngradError(
                f"hparams file {path} has {key}={raw.get(key)!r}; this run needs {expected!r}"
            )
    if bool(raw.get("all_diverged", False)):
        return Hparams(None, None, None, True)
    lr = _float(f"{path}: learning_rate", raw.get("learning_rate"), positive=True)
    momentum = raw.get("momentum")
    if momentum is not None:
        momentum = _float(f"{path}: momentum", momentum)
    alpha = raw.get("alpha")
    if alpha is not None:
        alpha = _float(f"{path}: alpha", alpha, positive=True)
    return Hparams(lr, momentum, alpha, False)
