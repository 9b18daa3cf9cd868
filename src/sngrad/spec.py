"""The training spec (docs/CONTRACTS.md) and the chosen hyper-parameters (best.json), checked.

The spec is plain JSON, given on the command line as a string or as ``@path/to/spec.json``::

    {"hidden": [256, 256], "epochs": 20, "init_seed": 0,
     "tune": {"budget": 8, "lr_min": 1e-3, "lr_max": 1.0, "momentum_min": 0.5,
              "momentum_max": 0.99, "seeds": [0], "search_seed": 0},
     "seeds": [1, 2, 3], "alpha": null, "backend": "dense",
     "checkpoint_every": 5, "diverge_loss": 1e3}

A key that is left out takes the value shown above (``DEFAULTS`` / ``TUNE_DEFAULTS``); an
unknown key, a wrong type or an out-of-range value is a :class:`SngradError` naming the key.
``checkpoint_every = 0`` turns checkpoints off. ``alpha = null`` means each sngrad variant's
``transforms.DEFAULT_ALPHA``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sngrad.errors import SngradError, choice_error

BACKENDS = ("dense", "vmap", "chunked")  # same names as stats.BACKENDS, kept import-light
MAX_SEED = 2**32 - 1

DEFAULTS: dict[str, Any] = {
    "hidden": [256, 256],
    "epochs": 20,
    "init_seed": 0,
    "seeds": [1, 2, 3],
    "alpha": None,
    "backend": "dense",
    "checkpoint_every": 5,
    "diverge_loss": 1e3,
}
TUNE_DEFAULTS: dict[str, Any] = {
    "budget": 8,
    "lr_min": 1e-3,
    "lr_max": 1.0,
    "momentum_min": 0.5,
    "momentum_max": 0.99,
    "seeds": [0],
    "search_seed": 0,
}


@dataclass(frozen=True)
class TuneSpec:
    budget: int
    lr_min: float
    lr_max: float
    momentum_min: float
    momentum_max: float
    seeds: tuple[int, ...]
    search_seed: int


@dataclass(frozen=True)
class TrainSpec:
    hidden: tuple[int, ...]
    epochs: int
    init_seed: int
    seeds: tuple[int, ...]
    alpha: float | None
    backend: str
    checkpoint_every: int
    diverge_loss: float
    tune: TuneSpec

    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON data (lists, not tuples), defaults filled in."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        out["seeds"] = list(self.seeds)
        out["tune"]["seeds"] = list(self.tune.seeds)
        return out


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


def _seeds(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise SngradError(f"{where} must be a non-empty list of integer seeds, got {value!r}")
    seeds = tuple(_int(f"{where}[{i}]", s, low=0, high=MAX_SEED) for i, s in enumerate(value))
    if len(set(seeds)) != len(seeds):
        raise SngradError(f"{where} must not repeat a seed, got {list(seeds)}")
    return seeds


def _unknown(where: str, given: dict, allowed: dict) -> None:
    extra = sorted(set(given) - set(allowed))
    if extra:
        raise SngradError(
            f"unknown key {where}{extra[0]!r} in the training spec; valid: {', '.join(allowed)}"
        )


def _tune(raw: Any) -> TuneSpec:
    if not isinstance(raw, dict):
        raise SngradError(f"spec key 'tune' must be an object, got {raw!r}")
    _unknown("tune.", raw, TUNE_DEFAULTS)
    t = {**TUNE_DEFAULTS, **raw}
    lr_min = _float("tune.lr_min", t["lr_min"], positive=True)
    lr_max = _float("tune.lr_max", t["lr_max"], positive=True)
    if lr_max < lr_min:
        raise SngradError(f"tune.lr_max ({lr_max}) must be >= tune.lr_min ({lr_min})")
    m_min = _float("tune.momentum_min", t["momentum_min"])
    m_max = _float("tune.momentum_max", t["momentum_max"])
    if not 0 <= m_min <= m_max < 1:
        raise SngradError(
            f"tune.momentum_min/momentum_max must satisfy 0 <= min <= max < 1, got "
            f"{m_min}, {m_max}"
        )
    return TuneSpec(
        budget=_int("tune.budget", t["budget"], low=1),
        lr_min=lr_min,
        lr_max=lr_max,
        momentum_min=m_min,
        momentum_max=m_max,
        seeds=_seeds("tune.seeds", t["seeds"]),
        search_seed=_int("tune.search_seed", t["search_seed"], low=0, high=MAX_SEED),
    )


def spec_from_dict(raw: Any) -> TrainSpec:
    """Check a decoded spec and fill in defaults."""
    if not isinstance(raw, dict):
        raise SngradError(f"the training spec must be a JSON object, got {type(raw).__name__}")
    _unknown("", raw, {**DEFAULTS, "tune": None})
    s = {**DEFAULTS, **raw}
    hidden = s["hidden"]
    if not isinstance(hidden, list):
        raise SngradError(f"spec key 'hidden' must be a list of layer widths, got {hidden!r}")
    hidden = tuple(_int(f"hidden[{i}]", h, low=1) for i, h in enumerate(hidden))
    alpha = s["alpha"]
    if alpha is not None:
        alpha = _float("alpha", alpha, positive=True)
    if s["backend"] not in BACKENDS:
        raise choice_error("backend", s["backend"], BACKENDS)
    return TrainSpec(
        hidden=hidden,
        epochs=_int("epochs", s["epochs"], low=1),
        init_seed=_int("init_seed", s["init_seed"], low=0, high=MAX_SEED),
        seeds=_seeds("seeds", s["seeds"]),
        alpha=alpha,
        backend=s["backend"],
        checkpoint_every=_int("checkpoint_every", s["checkpoint_every"], low=0),
        diverge_loss=_float("diverge_loss", s["diverge_loss"], positive=True),
        tune=_tune(raw.get("tune", {})),
    )


def _read_json_arg(text: str, what: str) -> Any:
    """JSON from a string, or from a file when the text is ``@path``."""
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
    raw = text if isinstance(text, dict) else _read_json_arg(text, "training spec")
    return spec_from_dict(raw)


# ----------------------------------------------------------------------------- best.json


@dataclass(frozen=True)
class Hparams:
    """The chosen setting of a tuning run; all_diverged means there is none."""

    learning_rate: float | None
    momentum: float | None
    alpha: float | None
    all_diverged: bool


def load_hparams(path: str | Path, optimizer: str, batch_size: int) -> Hparams:
    """Read best.json written by ``tune`` and check it belongs to this optimizer / batch size."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise SngradError(f"cannot read hparams file {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise SngradError(f"hparams file {path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise SngradError(f"hparams file {path} must hold a JSON object")
    for key, expected in (("optimizer", optimizer), ("batch_size", batch_size)):
        if raw.get(key) != expected:
            raise SngradError(
                f"hparams file {path} has {key}={raw.get(key)!r}; this run needs {expected!r}"
            )
    all_diverged = bool(raw.get("all_diverged", False))
    if all_diverged:
        return Hparams(None, None, None, True)
    lr = _float(f"{path}: learning_rate", raw.get("learning_rate"), positive=True)
    momentum = raw.get("momentum")
    if momentum is not None:
        momentum = _float(f"{path}: momentum", momentum)
    alpha = raw.get("alpha")
    if alpha is not None:
        alpha = _float(f"{path}: alpha", alpha, positive=True)
    return Hparams(lr, momentum, alpha, False)
