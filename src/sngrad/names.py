"""Run names: the one grammar every stage reads, importable without jax.

A *run* is what the study trains and tables: an *optimizer* of the registry, optionally
followed by ``@<alpha>`` when a sngrad optimizer's alpha is fixed (raw units) instead of tuned,
and by ``~<schedule>`` when the run's learning-rate schedule is not the profile's own
(``train.schedule``)::

    run       := optimizer [ "@" alpha ] [ "~" schedule ]
    schedule  := "constant" | "cosine"
    optimizer := base | sngrad_base "+sngrad" digit | "sgd+cv" | "sgd+svrg"
    digit     := "1" | "2" | "3"          (variant I, II, III of sngrad.transforms)

``sgd+sngrad1@0.1`` is the optimizer ``sgd+sngrad1`` (base ``sgd``, variant ``I``) with alpha
fixed at 0.1, read in absolute units; a tuned ``sgd+sngrad1`` reads its alpha relative to the
step's RMS sigma (:attr:`RunName.alpha_reference`). An alpha is written in its shortest form
(``format(alpha, "g")``), so that one run has one spelling in paths, wildcards and CSV cells.
``sgd+cv~constant`` is ``sgd+cv`` at a constant learning rate in a profile whose schedule
decays: an *arm* of the study. A run and its paired base always share the schedule
(``sgd+cv~constant`` is compared with ``sgd~constant``).

Two different "bases" appear in the study and are kept apart here:

- :data:`BASES`, the base optimizers of the registry (what precedes the ``+``);
- :attr:`RunName.paired_base`, the run a run is compared with in the paired tests, one of
  :data:`PAIRED_BASES`: ``X+sngradN -> X``, svag, msvag, sgd+cv, sgd+svrg -> sgd,
  adabelief -> adam; the paired bases themselves have none.

A name is parsed once, where it enters (:func:`parse_run`: the command line, a Snakemake
rule, a notebook's parameters, a profile or a table read from disk), and the parsed
:class:`RunName` is what the rest of the code takes and asks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from sngrad.errors import SngradError

BASES = ("sgd", "momentum", "adam", "msvag", "svag", "adabelief")  # registry base optimizers
PAIRED_BASES = ("sgd", "momentum", "adam")  # what every other run is compared with
VARIANTS = ("I", "II", "III")  # sngrad variants, as sngrad.transforms names them
SCHEDULES = ("constant", "cosine")  # learning-rate schedules (sngrad.train.step)
BACKENDS = ("dense", "vmap", "chunked")  # per-example statistics backends (sngrad.stats)
# backends of the any-model moments (sngrad.moments): a loss of (params, batch), a flax model
MODEL_BACKENDS = ("vmap", "chunked")
FLAX_BACKENDS = ("auto", "fast", *MODEL_BACKENDS)

VARIANT_OF_DIGIT = {"1": "I", "2": "II", "3": "III"}
SNGRAD_BASES = ("sgd", "momentum", "adam")  # bases a +sngradN modifier may follow
CV_COEFFICIENT = {"cv": "optimal", "svrg": 1.0}  # control-variate modifiers (on sgd only)
CV_BASES = ("sgd",)
MOMENTUM_BASES = ("momentum",)

OPTIMIZERS = (
    *BASES,
    *(f"{base}+sngrad{digit}" for base in SNGRAD_BASES for digit in VARIANT_OF_DIGIT),
    *(f"{base}+{modifier}" for base in CV_BASES for modifier in CV_COEFFICIENT),
)

_NAMED_PAIRED_BASES = {
    "svag": "sgd",
    "msvag": "sgd",
    "adabelief": "adam",
    "sgd+cv": "sgd",
    "sgd+svrg": "sgd",
}


class RunName(NamedTuple):
    """A run name parsed once, where it enters (the command line, a Snakemake rule, a
    notebook's parameters), and handed on as this value: the engine, the step, the optimizer
    registry, the cost model and the analysis ask it rather than read the string again.

    ``optimizer`` is the registry name (``sgd+sngrad1``), ``base`` its base optimizer
    (``sgd``), ``variant`` the sngrad variant (``"I"``..``"III"`` or None), ``cv`` the
    control-variate coefficient (``"optimal"``, 1.0 or None), ``fixed_alpha`` the raw alpha
    after ``@`` (None: tuned), ``schedule`` the schedule after ``~`` (None: the profile's).
    What follows from them: :attr:`name` (also ``str(run)``, the one spelling of paths and
    CSV cells), :attr:`alpha_reference`, :attr:`paired_base`, :attr:`needs_variance`,
    :attr:`needs_snapshot`, :attr:`has_momentum`, :attr:`step_kind`.
    """

    optimizer: str
    base: str
    variant: str | None
    cv: str | float | None
    fixed_alpha: float | None
    schedule: str | None = None

    @property
    def name(self) -> str:
        """The run name in its shortest form."""
        return format_run(self.optimizer, self.fixed_alpha, self.schedule)

    def __str__(self) -> str:
        return self.name

    @property
    def needs_variance(self) -> bool:
        """Whether a step feeds the optimizer the per-example gradient variance (``grad_var``:
        +sngrad variants and svag)."""
        return self.variant is not None or self.base == "svag"

    @property
    def needs_snapshot(self) -> bool:
        """Whether a step feeds the optimizer the snapshot statistics (+cv, +svrg)."""
        return self.cv is not None

    @property
    def has_momentum(self) -> bool:
        """Whether the optimizer takes a momentum coefficient (momentum and its +sngrad)."""
        return self.base in MOMENTUM_BASES

    @property
    def step_kind(self) -> str:
        """What one step computes: ``"plain"`` (loss and gradient), ``"moments"`` (and the
        per-example variance), ``"cv"`` (the co-moments at the parameters and the snapshot)
        or ``"svrg"`` (the two batch means)."""
        if self.cv is not None:
            return "svrg" if self.cv == 1.0 else "cv"
        return "moments" if self.needs_variance else "plain"

    @property
    def paired_base(self) -> RunName | None:
        """The run this run is compared with in the paired tests (one of
        :data:`PAIRED_BASES`, with this run's ``~schedule``), or None for those:
        ``X+sngradN -> X``; svag, msvag, sgd+cv, sgd+svrg -> sgd; adabelief -> adam."""
        if self.optimizer in _NAMED_PAIRED_BASES:
            base = _NAMED_PAIRED_BASES[self.optimizer]
        elif "+" in self.optimizer:
            base = self.base
        else:
            return None
        return RunName(base, base, None, None, None, self.schedule)  # a plain registry base

    def schedule_or(self, primary: str) -> str:
        """The schedule the run trains with: its ``~schedule``, else the profile's
        ``primary``."""
        return self.schedule or primary

    @property
    def alpha_reference(self) -> str:
        """How the run's optimizer reads alpha (``sngrad.transforms.REFERENCES``).

        A run whose alpha is tuned reads the alpha of variants I and III relative to the
        step's root-mean-square sigma, ``"rms"`` (the study's protocol: a tuned alpha that
        does not drift as sigma falls during training); a run with ``@alpha`` keeps the
        prototype's absolute alpha, ``"absolute"``, and so do II (whose alpha is a ratio of
        squares, without a unit) and every optimizer without a variant.
        """
        if self.variant in ("I", "III") and self.fixed_alpha is None:
            return "rms"
        return "absolute"


def format_alpha(alpha: float) -> str:
    """An alpha in its shortest form: 0.1, not 0.10 or 1e-1."""
    return format(alpha, "g")


def format_run(optimizer: str, fixed_alpha: float | None = None,
               schedule: str | None = None) -> str:
    """``("sgd+sngrad1", 0.1, "constant")`` -> ``"sgd+sngrad1@0.1~constant"``; a part that is
    None is left out."""
    name = optimizer if fixed_alpha is None else f"{optimizer}@{format_alpha(fixed_alpha)}"
    return name if schedule is None else f"{name}~{schedule}"


def parse_optimizer(name: str) -> RunName:
    """Split a registry optimizer name (no ``@``); its ``fixed_alpha`` is None."""
    if not isinstance(name, str):
        raise SngradError(f"optimizer name must be a string, got {name!r}")
    if name not in OPTIMIZERS:
        raise SngradError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    base, _, modifier = name.partition("+")
    variant = VARIANT_OF_DIGIT.get(modifier.removeprefix("sngrad")) if modifier else None
    return RunName(name, base, variant, CV_COEFFICIENT.get(modifier), None)


def parse_run(run: str) -> RunName:
    """``"sgd+sngrad1@0.1~constant"`` -> ``RunName("sgd+sngrad1", "sgd", "I", None, 0.1,
    "constant")``.

    The alpha is raw, finite and > 0, allowed only after a +sngrad optimizer, and written in
    its shortest form (:func:`format_alpha`); the schedule is one of :data:`SCHEDULES`.
    """
    if not isinstance(run, str):
        raise SngradError(f"run name must be a string, got {run!r}")
    head, tilde, schedule = run.partition("~")
    if tilde and schedule not in SCHEDULES:
        raise SngradError(f"run {run!r}: unknown schedule {schedule!r} after '~'; valid: "
                          f"{', '.join(SCHEDULES)}")
    optimizer, at, text = head.partition("@")
    parts = parse_optimizer(optimizer)._replace(schedule=schedule if tilde else None)
    if at:
        if parts.variant is None:
            raise SngradError(f"run {run!r}: a fixed alpha (@a) needs a +sngrad optimizer")
        try:
            alpha = float(text)
        except ValueError:
            raise SngradError(f"run {run!r}: the alpha after '@' must be a number") from None
        if not (math.isfinite(alpha) and alpha > 0):
            raise SngradError(f"run {run!r}: the alpha after '@' must be finite and > 0")
        parts = parts._replace(fixed_alpha=alpha)
    if parts.name != run:  # one spelling per run, so paths and CSV cells agree
        raise SngradError(f"run {run!r}: write it as {parts.name!r}")
    return parts
