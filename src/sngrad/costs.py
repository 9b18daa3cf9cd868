"""Counted cost of training: floating-point operations (FLOPs) of every run, not timings.

Pure Python on integers (no jax, no clock), so every machine gets the same numbers and the
equal-compute comparison of the report is deterministic.

Network and conventions
    A network is a :class:`sngrad.architecture.Architecture`, its layers in order; an MLP may
    be given by its widths ``[d_0, d_1, ..., d_L]``
    (:func:`sngrad.architecture.as_architecture`): layer l maps ``a = d_{l-1}`` inputs to
    ``b = d_l`` outputs, ReLU after every layer but the last, softmax cross-entropy on the
    logits. ``P_W = sum_l a b`` weights, ``P = P_W + sum_l b``
    parameters (a convolution adds its kernel's weights and one bias per output channel). A
    matrix product of an (m, k) and a (k, n) matrix costs ``2 m k n``; an elementwise
    operation costs one FLOP per element and per arithmetic operation (add, multiply,
    compare, select, sqrt, exp, log count alike). Counts follow the code in
    :mod:`sngrad.stats`, :mod:`sngrad.transforms` and :mod:`sngrad.train.step`; the matrix
    products dominate (96 to 99.6 % of a step's count on the study's MLPs at B = 128), the
    elementwise constants are the operations written there. The diagnostics (measurements,
    not part of any optimizer) are not counted. Counted FLOPs are work, not time: an
    elementwise pass over the parameters is memory-bound and costs more time per FLOP than a
    matrix product (benchmarks/step_time.py --engine reports measured / counted per
    optimizer).

Per example (B examples per step)
    forward   F = sum_l (2ab + b) + sum_{l<L} b + 4 d_L
                (products, bias add, ReLU, log-softmax: subtract max, exp, sum, log)
    backward  G = 3 d_L + sum_{l<L} b + sum_l (2ab + b) + sum_{l>=2} 2ab
                (softmax minus one-hot and the 1/B seed, ReLU mask, weight-gradient products
                and bias sums, input-gradient products; the first layer needs no input
                gradient)
    moments   M = sum_l (2ab + a + 2b + 3b)
                (dense backend: the product (A*A)^T (D*D) the size of the weight gradient,
                the squares of A and of D, the bias variance's two passes)
    co-moment C = sum_l (2ab + a + 2b + 4b)
                (``sgd+cv``: (A*A0)^T (D*D0) and the bias covariance)

    Every count is a sum over the layers: a dense layer is one term of each MLP sum above
    (its ReLU terms only where a ReLU follows it, its input-gradient product only where a
    layer with parameters lies before it, as for the MLP's first layer). The dense layers of
    a convolutional network act on a flat (B, features) input and count the same.
    A convolution with a k x k kernel from ``c`` to ``c'`` channels on an H x W map (stride
    1, padding that keeps H and W, ReLU after) does ``mac = H W k^2 c c'`` multiply-adds per
    example (the padded border counted like the interior) and has ``n = H W c'`` outputs,
    ``K = k^2 c c'`` kernel weights and ``c'`` biases:
      forward   2 mac + n + n        (the product, bias add, ReLU)
      backward  2 mac + n + n + 2 mac
                (kernel-gradient product, bias sum, ReLU mask; the input-gradient product
                again only where a layer with parameters lies before it)
      moments   4 (K + c')
                (the flax fast path, :mod:`sngrad.moments.layers`, forms the B per-example
                kernel gradients with a product of 2 mac per example that takes the place of
                the batch kernel-gradient product already in G, so it adds nothing here,
                then reduces them in two passes, a mean and then the centred squares)
      co-moment 2 (K + c')  (the cross term of the two-pass co-moments)
    A max-pool with a w x w window and o outputs: forward (w^2 - 1) o comparisons, backward
    w^2 o (each output's gradient routed to its tile's maximum), none before the first layer
    with parameters. Flattening the feature map costs nothing.

Per parameter and step (divided by B per example)
    optimizer update: :data:`UPDATE_PER_PARAMETER` (sgd: scale and add = 2, ...);
    variance finish ``max(E[g^2] - mean^2, 0)``: 3 per dense weight, and the division of a
    convolution's two-pass sum of squares by B: 1 per kernel weight; sngrad factor:
    :data:`FACTOR_PER_PARAMETER` per variant, and for a run whose alpha is relative to the
    step's RMS sigma (``RunName.alpha_reference == "rms"``: tuned I and III) the sum of the
    variances, :data:`RMS_SIGMA_PER_PARAMETER`; cv: covariance finish 2 per dense weight (1
    per kernel weight, the division by B), Cauchy-Schwarz clip 7, optimal coefficient 5,
    correction 5 per parameter; svrg: correction 5.

One step, by optimizer (per example, plus the per-parameter terms / B)
    plain (sgd, momentum, adam, adabelief, msvag): ``F + G``
    ``+sngradN`` and ``svag``: ``F + G + M`` (the dense pass does the same products as SGD
        and one extra product per layer)
    ``sgd+svrg``: ``2 (F + G)`` (loss and gradient at the parameters and at the snapshot; the
        lean step of :mod:`sngrad.train.step` computes no variances)
    ``sgd+cv``: ``2 (F + G + M) + C`` (moments at both points and the co-moment)

Anchor (``+cv``, ``+svrg``)
    Before epochs 0, m, 2m, ... (m = ``snapshot_every``) the mean gradient over the N training
    examples: ``N (F + G) + P ceil(N / 1024)`` (the chunk sums of ``engine._full_gradient``),
    so ``ceil(E / m)`` anchors in E epochs.

Equal compute
    A run of the base (``RunName.paired_base``) for E epochs of ``S = N // B`` steps costs
    ``budget = C_base(E S)``, with ``C_r(t) = t c_r + anchors taken before step t`` (step
    costs ``c_r`` of :func:`step_flops`). The budget step ``k*`` of a run is the largest t
    with ``C_run(t) <= budget``; it is known before training, and the engine evaluates the
    parameters after exactly k* steps. A run no dearer than its base (the base itself) gets
    ``k* = E S``; a strictly cheaper one would need more steps than it trains, and it is
    compared at its end with ``capped = True`` (no run of the study is cheaper than its base).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sngrad import profile as profile_values
from sngrad.architecture import Architecture, Conv, Dense, MaxPool, as_architecture
from sngrad.errors import SngradError
from sngrad.layout import noise_enabled
from sngrad.names import RunName, parse_run

LOSS_FORWARD_PER_CLASS = 4  # log-softmax: subtract the max, exp, sum, log-subtract
LOSS_BACKWARD_PER_CLASS = 3  # softmax - one-hot, times the 1/B seed
ANCHOR_CHUNK = 1024  # examples per chunk of the anchor's full-data gradient (engine.EVAL_CHUNK)

UPDATE_PER_PARAMETER = {
    "sgd": 2,  # -lr g, add
    "momentum": 4,  # m b + g, -lr b, add
    "adam": 13,  # two moment EMAs (3 + 4), two bias corrections, sqrt + eps + divide, lr, add
    "adabelief": 15,  # adam with (g - m)^2 in place of g^2, and eps_root
    "msvag": 20,  # adam's EMAs and corrections, rho-weighted variance, gamma, clip, lr, add
    "svag": 9,  # the factor m^2 / (m^2 + max(v, 0) / B) (7) and sgd's 2
}
FACTOR_PER_PARAMETER = {"I": 6, "II": 12, "III": 6}  # scale_factor and the multiply by it
# transforms.rms_sigma: max(var, 0) and the add into the sum. Its division by P and sqrt and
# the guarded alpha / s of transforms.step_alpha are some 20 operations per step, not per
# parameter, and are left out as negligible (4e-5 of a step of the smoke profile's 64-16-10
# network at B = 64, the smallest of the profiles).
RMS_SIGMA_PER_PARAMETER = 2
VARIANCE_FINISH_PER_WEIGHT = 3  # E[g^2] - mean^2 (2), clamp at 0 (1)
CV_PER_WEIGHT = 2  # the covariance finish E[g h] - mean snap_mean
# A convolution's moments come from its B per-example kernel gradients, reduced in two passes
# (sngrad.moments.generic.two_pass_moments): per example and parameter the centring and the
# square and the two sums, 4 for the moments, 2 more for the cross term of the co-moment.
CONV_MOMENT_PER_PARAMETER = 4
CONV_CO_MOMENT_PER_PARAMETER = 2
VARIANCE_FINISH_PER_CONV_WEIGHT = 1  # the two-pass sum of squares divided by B
CV_PER_CONV_WEIGHT = 1  # the two-pass cross sum divided by B
CV_PER_PARAMETER = 7 + 5 + 5  # Cauchy-Schwarz clip, optimal coefficient, correction
SVRG_PER_PARAMETER = 5  # the correction mean - (snap_mean - anchor), guarded and clipped


# ============================================================================ the network
#
# Every function of a network takes either an MLP's widths (the tests, the benchmark and the
# workflow pass them) or an Architecture, turns it into the Architecture once at its entry
# (:func:`sngrad.architecture.as_architecture`) and counts layer by layer.

Network = Sequence[int] | Architecture


def _multiply_adds(layer: Dense | Conv) -> int:
    """One example's multiply-adds of the layer's forward product (``a b`` of a dense layer)."""
    return layer.multiply_adds if isinstance(layer, Conv) else layer.weights


def _with_input_gradient(net: Architecture):
    """(layer, whether its input gradient is needed): only where a layer with parameters lies
    before it (the network's input needs no gradient)."""
    seen = False
    for layer in net.layers:
        yield layer, seen
        seen = seen or not isinstance(layer, MaxPool)


def weight_count(net: Network) -> int:
    """P_W: the weights of the network (dense weights and convolution kernels, biases
    excluded)."""
    return as_architecture(net).weight_count()


def parameter_count(net: Network) -> int:
    """P: weights and biases."""
    return as_architecture(net).parameter_count()


def forward_flops(net: Network) -> int:
    """F: one example's forward pass and loss (module docstring)."""
    net = as_architecture(net)
    total = LOSS_FORWARD_PER_CLASS * net.classes
    for layer in net.layers:
        if isinstance(layer, MaxPool):
            total += (layer.window ** 2 - 1) * layer.outputs
            continue
        n = layer.outputs
        total += 2 * _multiply_adds(layer) + n + (n if layer.relu else 0)
    return total


def backward_flops(net: Network) -> int:
    """G: one example's backward pass to the weight and bias gradients."""
    net = as_architecture(net)
    total = LOSS_BACKWARD_PER_CLASS * net.classes
    for layer, input_gradient in _with_input_gradient(net):
        if isinstance(layer, MaxPool):
            total += layer.window ** 2 * layer.outputs if input_gradient else 0
            continue
        n, product = layer.outputs, 2 * _multiply_adds(layer)
        total += (n if layer.relu else 0) + product + n + (product if input_gradient else 0)
    return total


def _moment_sum(net: Network, conv_per_parameter: int, dense_per_output: int) -> int:
    """One example's moment work: ``conv_per_parameter`` per kernel entry and bias of a
    convolution (the two-pass reduction of its per-example gradients); ``2ab + a +
    dense_per_output b`` for a dense layer (its outer-product formulas)."""
    total = 0
    for layer in as_architecture(net).parametrised:
        if isinstance(layer, Conv):
            total += conv_per_parameter * (layer.weights + layer.fan_out)
        else:
            total += 2 * layer.weights + layer.fan_in + dense_per_output * layer.fan_out
    return total


def moment_flops(net: Network) -> int:
    """M: one example's share of the second moments (dense layers: the outer-product
    formulas; convolutions: the two-pass reduction of the per-example gradients)."""
    return _moment_sum(net, CONV_MOMENT_PER_PARAMETER, 5)


def co_moment_flops(net: Network) -> int:
    """C: one example's share of the co-moments (``sgd+cv``)."""
    return _moment_sum(net, CONV_CO_MOMENT_PER_PARAMETER, 6)


def variance_finish_flops(net: Network) -> int:
    """Per step: the variance finish of every weight (dense VARIANCE_FINISH_PER_WEIGHT,
    convolution kernel VARIANCE_FINISH_PER_CONV_WEIGHT); ``3 P_W`` for an MLP."""
    return sum(layer.weights * (VARIANCE_FINISH_PER_CONV_WEIGHT if isinstance(layer, Conv)
                                else VARIANCE_FINISH_PER_WEIGHT)
               for layer in as_architecture(net).parametrised)


def covariance_finish_flops(net: Network) -> int:
    """Per step: the covariance finish of every weight (dense CV_PER_WEIGHT, convolution
    kernel CV_PER_CONV_WEIGHT); ``2 P_W`` for an MLP."""
    return sum(layer.weights * (CV_PER_CONV_WEIGHT if isinstance(layer, Conv)
                                else CV_PER_WEIGHT)
               for layer in as_architecture(net).parametrised)


def matmul_flops(net: Network) -> dict[str, int]:
    """The matrix products (and convolutions) alone, per example: forward, backward, moment
    products (a convolution's per-example kernel gradients replace its batch kernel-gradient
    product, counted in backward, so it adds no moment product)."""
    net = as_architecture(net)
    pairs = [(2 * _multiply_adds(layer), needed)
             for layer, needed in _with_input_gradient(net) if not isinstance(layer, MaxPool)]
    return {"forward": sum(p for p, _ in pairs),
            "backward": sum(p for p, _ in pairs) + sum(p for p, needed in pairs if needed),
            "moments": sum(2 * layer.weights for layer in net.parametrised
                           if isinstance(layer, Dense))}


def moment_floor(net: Network) -> float:
    """The matrix-product floor of a moment step over an SGD step: (fwd + bwd + one product
    the size of each dense weight gradient) / (fwd + bwd). 1.50 on 784-64-10, 1.37 on
    3x1024."""
    m = matmul_flops(net)
    return (m["forward"] + m["backward"] + m["moments"]) / (m["forward"] + m["backward"])


# ============================================================================ runs


# The functions of a run take it parsed (:class:`sngrad.names.RunName`: its ``step_kind``,
# ``base``, ``variant``, ``alpha_reference`` and ``paired_base`` decide the count); those of a
# profile parse the profile's run names once, where they read them.


def step_flops(run: RunName, net: Network, batch: int) -> int:
    """FLOPs of one training step of ``run`` on a batch of ``batch`` examples."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SngradError(f"batch must be an integer >= 1; got {batch!r}")
    kind, net = run.step_kind, as_architecture(net)
    f, g, p = forward_flops(net), backward_flops(net), parameter_count(net)
    per_param = UPDATE_PER_PARAMETER[run.base]
    if kind == "plain":
        return batch * (f + g) + per_param * p
    if kind == "svrg":
        return batch * 2 * (f + g) + (per_param + SVRG_PER_PARAMETER) * p
    m = moment_flops(net)
    if kind == "moments":
        factor = FACTOR_PER_PARAMETER[run.variant] if run.variant is not None else 0
        if run.alpha_reference == "rms":
            factor += RMS_SIGMA_PER_PARAMETER
        return batch * (f + g + m) + (per_param + factor) * p + variance_finish_flops(net)
    return (batch * (2 * (f + g + m) + co_moment_flops(net))
            + (per_param + CV_PER_PARAMETER) * p
            + 2 * variance_finish_flops(net) + covariance_finish_flops(net))


def example_flops(run: RunName, net: Network, batch: int) -> float:
    """FLOPs per example of one step: ``step_flops / batch``."""
    return step_flops(run, net, batch) / batch


def anchor_flops(run: RunName, net: Network, n_train: int) -> int:
    """FLOPs of one anchor (full-data mean gradient) of a control-variate run, else 0."""
    if not run.needs_snapshot:
        return 0
    chunks = -(-n_train // min(ANCHOR_CHUNK, n_train))
    return n_train * (forward_flops(net) + backward_flops(net)) + parameter_count(
        net) * chunks


def steps_per_epoch(n_train: int, batch: int) -> int:
    """S = N // B (the engine drops the remainder)."""
    if not 1 <= batch <= n_train:
        raise SngradError(f"batch size {batch} is not allowed; it must be in [1, {n_train}]")
    return n_train // batch


def cumulative_flops(run: RunName, net: Network, n_train: int, batch: int,
                     snapshot_every: int, steps: int) -> int:
    """C_run(t): FLOPs of the first ``steps`` steps, anchors taken before them included."""
    per_epoch = steps_per_epoch(n_train, batch)
    epochs_started = -(-steps // per_epoch)
    anchors = -(-epochs_started // snapshot_every)
    return steps * step_flops(run, net, batch) + anchors * anchor_flops(run, net, n_train)


def epoch_flops(run: RunName, net: Network, n_train: int, batch: int,
                snapshot_every: int = 1) -> float:
    """FLOPs of one epoch, the anchor amortised over ``snapshot_every`` epochs."""
    steps = steps_per_epoch(n_train, batch)
    return (steps * step_flops(run, net, batch)
            + anchor_flops(run, net, n_train) / snapshot_every)


def cost_ratio(run: RunName, base: RunName, net: Network, n_train: int, batch: int,
               snapshot_every: int = 1) -> float:
    """Epoch cost of ``run`` over that of ``base`` (anchors amortised)."""
    return (epoch_flops(run, net, n_train, batch, snapshot_every)
            / epoch_flops(base, net, n_train, batch, snapshot_every))


# ============================================================================ equal compute


@dataclass(frozen=True)
class Budget:
    """Where a run meets its base's total counted cost.

    ``step``: k*, the steps after which the run has spent at most the base's E epochs;
    ``steps_total``: E S; ``budget_flops``: the base's total; ``run_flops``: C_run(k*);
    ``capped``: the run is cheaper than its base, so the budget lies past its last step and
    k* is that last step (see module docstring); ``epochs``: k* / S, fractional.
    """

    run: str
    base: str
    step: int
    steps_total: int
    steps_per_epoch: int
    budget_flops: int
    run_flops: int
    capped: bool

    @property
    def epochs(self) -> float:
        return self.step / self.steps_per_epoch


def budget_step(run: RunName, net: Network, n_train: int, batch: int, epochs: int,
                snapshot_every: int = 1) -> Budget:
    """The budget step k* of ``run`` against its base (a base against its optimizer)."""
    base = run.paired_base or run._replace(schedule=None)  # a base: itself, by its optimizer
    net = as_architecture(net)  # once, not at each of the search's steps
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise SngradError(f"epochs must be an integer >= 1; got {epochs!r}")
    if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or \
            snapshot_every < 1:
        raise SngradError(f"snapshot_every must be an integer >= 1; got {snapshot_every!r}")
    total = epochs * steps_per_epoch(n_train, batch)

    def spent(who: RunName, t: int) -> int:
        return cumulative_flops(who, net, n_train, batch, snapshot_every, t)

    budget, full = spent(base, total), spent(run, total)
    per_epoch = steps_per_epoch(n_train, batch)
    if full <= budget:
        return Budget(run.name, base.name, total, total, per_epoch, budget, full,
                      full < budget)
    low, high = 0, total  # spent(low) <= budget < spent(high); spent is non-decreasing
    while high - low > 1:
        mid = (low + high) // 2
        if spent(run, mid) <= budget:
            low = mid
        else:
            high = mid
    return Budget(run.name, base.name, low, total, per_epoch, budget, spent(run, low), False)


# ============================================================================ a profile's cost
#
# ``python -m sngrad config cost PROFILE``: the training work of a profile, counted before it
# runs, by stage; one process per Snakemake job, every job on one core (resources.threads).

# An assumed sustained float32 rate of one data-centre GPU on the study's small dense layers
# (batches of 128, widths <= 1024, all runs of a job vmapped): about 15 % of an H100's
# 67 TFLOP/s float32 peak. Small GEMMs and the per-step scan keep a GPU far from its peak; the
# figure is an assumption for planning, not a measurement on this project's machines.
GPU_SUSTAINED_FLOPS = 10e12
CONFIRM_CORE_HOURS = 24.0  # estimates above this ask for confirmation on a terminal
DEFAULT_BENCHMARK_MIN = 10.0  # the default profile's benchmark, measured alone on 2 cores
NOISE_FULL_DRAWS_UP_TO = 512  # sngrad.noise.measure.FULL_DRAWS_UP_TO
NOISE_MIN_BATCHES = 8  # sngrad.noise.measure.MIN_BATCHES
REFERENCE_CHECKPOINTS = 5  # init, epoch1, p25, p50, p100 (sngrad.train.commands)
TEST_EXAMPLES = {"mnist": 10000, "fashion_mnist": 10000, "cifar10": 10000}  # official test sets


@dataclass(frozen=True)
class Stage:
    """One stage of a profile: its jobs, example-steps (examples through a training step),
    counted FLOPs, program steps (steps of its compiled training programs, each advancing K
    runs at once) and run-steps (program steps x K); ``note`` says what is left out."""

    name: str
    jobs: int
    example_steps: int
    flops: float
    program_steps: int
    run_steps: int
    note: str = ""


def noise_batches(batch_size: int, batches: int) -> int:
    """Batches the noise study draws at one batch size (:func:`sngrad.noise.measure.
    n_batches_for`)."""
    if batch_size <= NOISE_FULL_DRAWS_UP_TO:
        return batches
    return max(min(batches, NOISE_MIN_BATCHES), batches * NOISE_FULL_DRAWS_UP_TO // batch_size)


def _training(run, net, n_train, batch, epochs, snapshot_every, runs, eval_examples):
    """(example-steps, FLOPs) of ``runs`` runs trained side by side, with ``eval_examples``
    forward passes per run and epoch."""
    steps = epochs * steps_per_epoch(n_train, batch)
    flops = runs * (cumulative_flops(run, net, n_train, batch, snapshot_every, steps)
                    + epochs * eval_examples * forward_flops(net))
    return runs * steps * batch, flops


def _cell_shape(profile: dict, dataset: str) -> tuple[Architecture, int, int, int]:
    """(network, training examples, validation examples, test examples) of one dataset."""
    from sngrad.data import get_spec

    spec = get_spec(dataset)
    net = profile_values.architecture(profile, dataset)
    n_train, n_val = profile_values.split_sizes(profile, dataset)
    return net, n_train, n_val, TEST_EXAMPLES.get(spec.name, n_val)


def tuning_trial_flops(profile: dict, dataset: str, run: RunName, batch: int) -> float:
    """Counted FLOPs of one tuning run (one setting, one tuning seed): ``train.epochs`` epochs
    of training and one validation pass at the end."""
    net, n_train, n_val, _ = _cell_shape(profile, dataset)
    train = profile["train"]
    _, flops = _training(run, net, n_train, batch, int(train["epochs"]),
                         int(train["snapshot_every"]), 1, 0)
    return flops + n_val * forward_flops(net)


def profile_stages(profile: dict) -> list[Stage]:
    """The counted work of a profile (a mapping as :func:`sngrad.config.load_profile` returns).

    tuning: the initial grid and the refinement of every (dataset, run, batch size), tune
    seeds x settings runs of ``train.epochs`` epochs and one validation pass at the end; final
    training: every final seed with validation and test passes per epoch; reference: sgd on
    the first final seed; noise: at each of the 5 reference checkpoints, the exact moments
    over the training split and the drawn batches of every noise batch size (forward,
    backward, moments). A tuning job runs one program per round (round 0, the refinement),
    of its settings x tuning seeds; a training job one of the final seeds; the reference one
    of one run. A profile without the noise study (``noise.enabled: false``) has neither of
    the last two stages. The benchmark is timing-bound and counted apart
    (:func:`benchmark_minutes`).
    """
    from sngrad.spec import tune_spec
    from sngrad.train.protocol import trial_count

    train, tune = profile["train"], tune_spec(profile["tune"])
    seeds = len(tune.seeds)
    epochs, every = int(train["epochs"]), int(train["snapshot_every"])
    runs = [parse_run(run) for run in profile["optimizers"]]
    rounds = {run: trial_count(run, tune) for run in runs}
    noise = noise_enabled(profile)  # else no reference run and no noise jobs
    stages = ("tuning", "final training", *(("reference", "noise") if noise else ()))
    totals = {name: [0, 0, 0.0, 0, 0] for name in stages}

    def add(name, jobs, work, steps=0, runs=()):
        """``runs``: the K of each program of the job, ``steps`` steps each."""
        for i, value in enumerate((jobs, *work, steps * len(runs), steps * sum(runs))):
            totals[name][i] += value

    for dataset in profile["datasets"]:
        net, n_train, n_val, n_test = _cell_shape(profile, dataset)
        for run in runs:
            for batch in profile["batch_sizes"]:
                steps = epochs * steps_per_epoch(n_train, batch)
                tune_runs = sum(rounds[run]) * seeds
                tuned = _training(run, net, n_train, batch, epochs, every, tune_runs, 0)
                add("tuning", 1, (tuned[0], tuned[1] + tune_runs * n_val * forward_flops(
                    net)), steps, [count * seeds for count in rounds[run]])
                add("final training", 1, _training(run, net, n_train, batch, epochs, every,
                                                   len(train["seeds"]), n_val + n_test),
                    steps, [len(train["seeds"])])
        if not noise:
            continue
        ref_batch = profile_values.reference_batch_size(profile)
        add("reference", 1, _training(parse_run("sgd"), net, n_train, ref_batch, epochs,
                                      every, 1, 0),
            epochs * steps_per_epoch(n_train, ref_batch), [1])
        per_example = forward_flops(net) + backward_flops(net) + moment_flops(net)
        drawn = sum(b * noise_batches(b, profile["noise"]["batches"])
                    for b in profile_values.noise_batch_sizes(profile, dataset))
        add("noise", 1, (0, REFERENCE_CHECKPOINTS * (n_train + drawn) * per_example))
    counts = sorted({sum(r) for r in rounds.values()})
    notes = {"tuning": f"initial grid and refinement, {'/'.join(map(str, counts))} settings "
                       f"x {seeds} seeds per cell; extension rounds (a slab of the "
                       "grid each, until every axis is interior) not counted",
             "noise": "gradient moments at fixed parameters (no training steps)"}
    return [Stage(name, jobs, examples, flops, programs, runs, notes.get(name, ""))
            for name, (jobs, examples, flops, programs, runs) in totals.items()]


def calibrate_flops(net: Network, batch: int, seconds: float = 2.0) -> float:
    """The best sustained FLOP/s of this machine, on one core, for the products of one step
    of the network ``net`` at ``batch`` (a jitted chain of its forward pass: the products and
    convolutions, tanh in place of ReLU, the max-pools), from a timing of about ``seconds``.
    Imports jax (the only function here that does)."""
    import os
    import time

    if "jax" not in __import__("sys").modules:  # one core, as every workflow job gets
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                           "intra_op_parallelism_threads=1")
    import jax
    import jax.numpy as jnp

    net = as_architecture(net)
    layers = net.parametrised
    keys = jax.random.split(jax.random.PRNGKey(0), len(layers) + 1)
    x = jax.random.normal(keys[0], (batch, *net.input_shape), jnp.float32)
    ws = [jax.random.normal(k, (la.kernel, la.kernel, la.in_channels, la.out_channels)
                            if isinstance(la, Conv) else (la.fan_in, la.fan_out), jnp.float32)
          / (la.weights // la.fan_out) ** 0.5
          for k, la in zip(keys[1:], layers, strict=True)]

    @jax.jit
    def chain(x, ws):
        kernels = iter(ws)
        for layer in net.layers:
            if isinstance(layer, MaxPool):
                window = (1, layer.window, layer.window, 1)
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
                continue
            w = next(kernels)
            if isinstance(layer, Conv):
                x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
            else:
                x = x.reshape(x.shape[0], -1) @ w
            x = jnp.tanh(x) if layer.relu else x
        return x

    flops = batch * matmul_flops(net)["forward"]
    chain(x, ws).block_until_ready()
    best, deadline = 0.0, time.perf_counter() + seconds
    reps = 1
    while time.perf_counter() < deadline:
        tick = time.perf_counter()
        for _ in range(reps):
            out = chain(x, ws)
        out.block_until_ready()
        elapsed = time.perf_counter() - tick
        best = max(best, reps * flops / elapsed)
        reps = reps * 2 if elapsed < 0.05 else reps
    return best


def benchmark_repeats(config: Mapping) -> int:
    """Timed repeats of the benchmark: repeats x networks x batch sizes."""
    bench = config["benchmark"]
    return bench["repeats"] * len(bench["networks"]) * len(bench["batch_sizes"])


def benchmark_minutes(config: Mapping, default: Mapping) -> float:
    """The benchmark's minutes, scaled by its timed repeats from the default profile's
    measured DEFAULT_BENCHMARK_MIN."""
    return DEFAULT_BENCHMARK_MIN * benchmark_repeats(config) / benchmark_repeats(default)


# The network and batch the per-step overhead is timed on: their arithmetic (a few thousand
# FLOPs a step) is a rounding error next to what a step costs beyond it.
OVERHEAD_WIDTHS = (4, 4, 2)
OVERHEAD_BATCH = 8
OVERHEAD_RUNS = (1, 16)  # the K of the two timings the line a + b K goes through


@dataclass(frozen=True)
class StepOverhead:
    """Seconds one step of a compiled training program costs beyond its FLOPs, with K runs
    vmapped in it: ``per_step + per_run * K`` (gathering the batch, the update, the
    diagnostics' branch, the scan's bookkeeping)."""

    per_step: float
    per_run: float

    def seconds(self, program_steps: int, run_steps: int) -> float:
        return self.per_step * program_steps + self.per_run * run_steps


def calibrate_step_overhead(profile: Mapping, steps: int = 256, epochs: int = 3) -> StepOverhead:
    """The engine's own training program (:func:`sngrad.train.engine.run_sweep`, the
    profile's backend, diagnostics and snapshots as in a training job, a constant rate) on
    random data, at K = 1 and K = 16 runs of the network OVERHEAD_WIDTHS: the fastest epoch
    of ``epochs`` (contention only adds time) over its ``steps`` steps gives the time of a
    step at each K, and the line through both its two coefficients. Imports jax."""
    import contextlib
    import dataclasses
    import io
    import json

    import numpy as np

    from sngrad.data import Splits
    from sngrad.spec import parse_spec
    from sngrad.train.engine import TRAIN_MODE, RunConfig, run_sweep

    d_in, *hidden, classes = OVERHEAD_WIDTHS
    rng = np.random.default_rng(0)

    def part(n):
        return (rng.standard_normal((n, d_in)).astype(np.float32),
                rng.integers(0, classes, n).astype(np.int32))

    splits = Splits(*part(steps * OVERHEAD_BATCH), *part(64), *part(64), num_classes=classes,
                    name="random")
    spec = dataclasses.replace(parse_spec(json.loads(profile_values.training_spec(profile))),
                               hidden=tuple(hidden), model=None, epochs=epochs,
                               schedule="constant", checkpoint_every=0)
    per_step = []
    for k in OVERHEAD_RUNS:
        configs = [RunConfig(0.01, None, None, seed) for seed in range(k)]
        with contextlib.redirect_stderr(io.StringIO()):  # the sweep's progress lines
            wall = run_sweep(splits, parse_run("sgd"), OVERHEAD_BATCH, spec, configs,
                             TRAIN_MODE).records["wall_time"]
        per_step.append(float(np.min(np.diff(np.concatenate([[0.0], wall])))) / steps)
    (k1, k2), (t1, t2) = OVERHEAD_RUNS, per_step
    per_run = max((t2 - t1) / (k2 - k1), 0.0)
    return StepOverhead(max(t1 - per_run * k1, 0.0), per_run)


def _hours(seconds: float) -> str:
    if seconds >= 360:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:,.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def cost_report(profile: dict, rate: float | None, cores: int,
                overhead: StepOverhead | None = None,
                default: Mapping | None = None) -> tuple[str, float]:
    """The printed table and the estimated core-hours (NaN without a calibration): the counted
    FLOPs at the calibrated ``rate``, plus the calibrated per-step ``overhead`` of every
    program step and run-step; the benchmark's minutes scaled from the ``default`` profile's."""
    stages = profile_stages(profile)
    total = sum(s.flops for s in stages)
    lines = [f"profile {profile.get('profile', '?')}: counted training work "
             f"(sngrad.costs; FLOPs of matrix products and elementwise passes)",
             f"{'stage':<16}{'jobs':>6}{'example-steps':>16}{'run-steps':>14}{'FLOPs':>12}  note"]
    for s in stages:
        lines.append(f"{s.name:<16}{s.jobs:>6}{s.example_steps:>16,}{s.run_steps:>14,}"
                     f"{s.flops:>12.3g}  {s.note}")
    lines.append(f"{'total':<16}{sum(s.jobs for s in stages):>6}"
                 f"{sum(s.example_steps for s in stages):>16,}"
                 f"{sum(s.run_steps for s in stages):>14,}{total:>12.3g}")
    core_hours = math.nan
    if rate:
        arithmetic_s = total / rate
        per_step_s = 0.0 if overhead is None else overhead.seconds(
            sum(s.program_steps for s in stages), sum(s.run_steps for s in stages))
        core_s = arithmetic_s + per_step_s
        core_hours = core_s / 3600
        lines.append(f"this machine: {rate / 1e9:.1f} GFLOP/s per core (best sustained matmul "
                     "rate of the study's shapes, calibrated now)")
        if overhead is not None:
            widths = "-".join(map(str, OVERHEAD_WIDTHS))
            lines.append(f"  and {overhead.per_step * 1e6:.1f} us + {overhead.per_run * 1e6:.1f} "
                         "us x K per step of a program training K runs (the engine's step "
                         f"beyond its FLOPs, calibrated now on a {widths} network)")
        lines.append(f"  -> {core_hours:,.2f} core-hours ({_hours(arithmetic_s)} of arithmetic, "
                     f"{_hours(per_step_s)} of per-step overhead), about "
                     f"{_hours(core_s / cores)} on {cores} cores (training work only, a lower "
                     "bound on the time: compilation, data, analysis and report come on top)")
    lines.append(f"GPU: {_hours(total / GPU_SUSTAINED_FLOPS)} at an assumed sustained "
                 f"{GPU_SUSTAINED_FLOPS / 1e12:g} TFLOP/s (costs.GPU_SUSTAINED_FLOPS)")
    if default is not None:
        lines.append(f"benchmark (`make bench`, not part of a run): "
                     f"{benchmark_repeats(profile):,} timed repeats (repeats x "
                     "networks x batch sizes), about "
                     f"{_hours(60 * benchmark_minutes(profile, default))} at the "
                     "default profile's measured pace")
    return "\n".join(lines), core_hours
