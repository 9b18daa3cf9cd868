"""The counted cost model (sngrad.costs), the engine's evaluation at the budget step k*, and
the lean SVRG step."""

import csv
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT, spec_dict, toy_splits

from sngrad import costs, stats
from sngrad.data import save_splits
from sngrad.errors import SngradError
from sngrad.models import mlp_init
from sngrad.names import parse_run
from sngrad.optimizers import build_optimizer
from sngrad.spec import parse_spec
from sngrad.train import engine
from sngrad.train.commands import BUDGET_COLUMNS, train
from sngrad.train.engine import TRAIN_MODE, Mode, RunConfig, run_sweep
from sngrad.train.step import MLP, make_step

# A network small enough to count by hand: layers (3 -> 2) and (2 -> 2), P_W = 10, P = 14.
TINY = [3, 2, 2]
STUDY = [784, 64, 10]
DEEP = [784, 1024, 1024, 1024, 10]


# ----------------------------------------------------------------------------- counts


def test_tiny_network_counts_by_hand():
    # forward: products 12 + 8, bias adds 2 + 2, one ReLU of 2, log-softmax 4 x 2
    assert costs.forward_flops(TINY) == 12 + 8 + 2 + 2 + 2 + 8
    # backward: softmax - one-hot 3 x 2, ReLU mask 2, weight products 12 + 8, bias sums 2 + 2,
    # input gradient of the second layer only 8
    assert costs.backward_flops(TINY) == 6 + 2 + 12 + 8 + 2 + 2 + 8
    # moments: (A*A)^T (D*D) 12 + 8, squares of A 3 + 2, of D 2 x 2 + 2 x 2, bias var 3 x 2 twice
    assert costs.moment_flops(TINY) == 12 + 8 + 3 + 2 + 4 + 4 + 6 + 6
    assert costs.co_moment_flops(TINY) == 12 + 8 + 3 + 2 + 4 + 4 + 8 + 8
    assert (costs.weight_count(TINY), costs.parameter_count(TINY)) == (10, 14)


@pytest.mark.parametrize(("run", "flops"), [
    ("sgd", 4 * 74 + 2 * 14),
    ("momentum", 4 * 74 + 4 * 14),
    ("adam", 4 * 74 + 13 * 14),
    ("msvag", 4 * 74 + 20 * 14),  # no within-batch variance: a plain step
    # a tuned I or III reads alpha relative to the RMS sigma: max(var, 0) and the add into
    # the sum, 2 more per parameter (the sqrt and alpha / s are per step, not counted)
    ("sgd+sngrad1", 4 * (74 + 45) + (2 + 6 + 2) * 14 + 3 * 10),
    ("momentum+sngrad3", 4 * (74 + 45) + (4 + 6 + 2) * 14 + 3 * 10),
    ("sgd+sngrad1@0.1", 4 * (74 + 45) + (2 + 6) * 14 + 3 * 10),  # a fixed alpha is absolute
    ("sgd+sngrad3@0.1", 4 * (74 + 45) + (2 + 6) * 14 + 3 * 10),
    ("sgd+sngrad2", 4 * (74 + 45) + (2 + 12) * 14 + 3 * 10),  # II: absolute, tuned or not
    ("svag", 4 * (74 + 45) + 9 * 14 + 3 * 10),
    ("sgd+svrg", 4 * 2 * 74 + (2 + 5) * 14),  # two gradients, no moments
    ("sgd+cv", 4 * (2 * (74 + 45) + 49) + (2 + 17) * 14 + (6 + 2) * 10),
])
def test_step_flops_of_every_kind_on_the_tiny_network(run, flops):
    assert costs.step_flops(parse_run(run), TINY, 4) == flops


# The rest of the registry, counted the same way: F + G = 74 and M = 45 per example at B = 4,
# P = 14, P_W = 10; update constants sgd 2, momentum 4, adam 13, adabelief 15; factors I 6,
# II 12, III 6; the RMS sum of a tuned I or III 2; the variance finish 3 per weight.
REGISTRY_ROWS = {
    "adabelief": 4 * 74 + 15 * 14,
    "sgd+sngrad3": 4 * (74 + 45) + (2 + 6 + 2) * 14 + 3 * 10,
    "momentum+sngrad1": 4 * (74 + 45) + (4 + 6 + 2) * 14 + 3 * 10,
    "momentum+sngrad2": 4 * (74 + 45) + (4 + 12) * 14 + 3 * 10,
    "adam+sngrad1": 4 * (74 + 45) + (13 + 6 + 2) * 14 + 3 * 10,
    "adam+sngrad2": 4 * (74 + 45) + (13 + 12) * 14 + 3 * 10,
    "adam+sngrad3": 4 * (74 + 45) + (13 + 6 + 2) * 14 + 3 * 10,
    "momentum+sngrad1@0.1": 4 * (74 + 45) + (4 + 6) * 14 + 3 * 10,
    "adam+sngrad3@0.1": 4 * (74 + 45) + (13 + 6) * 14 + 3 * 10,
    "adam+sngrad2@0.05": 4 * (74 + 45) + (13 + 12) * 14 + 3 * 10,
    # an arm's schedule changes no count
    "sgd+cv~constant": 4 * (2 * (74 + 45) + 49) + (2 + 17) * 14 + (6 + 2) * 10,
}


@pytest.mark.parametrize(("run", "flops"), sorted(REGISTRY_ROWS.items()))
def test_step_flops_of_the_rest_of_the_registry(run, flops):
    assert costs.step_flops(parse_run(run), TINY, 4) == flops


def test_every_registry_optimizer_has_a_hand_counted_row():
    from sngrad.names import OPTIMIZERS

    counted = {"sgd", "momentum", "adam", "msvag", "sgd+sngrad1", "momentum+sngrad3",
               "sgd+sngrad2", "svag", "sgd+svrg", "sgd+cv", *REGISTRY_ROWS}
    assert set(OPTIMIZERS) <= counted


# The default profile's cells: 784-64-10, N = 8000, B = 128 (S = 62 steps, 620 in 10 epochs),
# anchors before every epoch. By hand: F = (100352 + 64) + (1280 + 10) + 64 (ReLU) + 40 =
# 101810; G = 30 + 64 + 100416 + 1290 + 1280 (layer 2's input gradient) = 103080;
# M = (100352 + 784 + 320) + (1280 + 64 + 50) = 102850; C = (100352 + 784 + 384) + (1280 +
# 64 + 60) = 102924; P_W = 50816, P = 50890; anchor 8000 (F + G) + 8 P. k* is the last t
# with t c_run (+ anchors before t) <= 620 c_base, recomputed here without sngrad.costs.
STUDY_COUNTS = {"F": 101810, "G": 103080, "M": 102850, "C": 102924, "PW": 50816, "P": 50890}
DEFAULT_K_STAR = {
    "sgd": 620, "momentum": 620, "adam": 620, "sgd+sngrad1": 407, "sgd+sngrad2": 405,
    "sgd+sngrad3": 407, "momentum+sngrad1": 408, "adam+sngrad1": 410, "sgd+sngrad1@0.1": 408,
    "sgd+sngrad2@0.05": 405, "sgd+sngrad3@0.1": 408, "svag": 408, "msvag": 599,
    "adabelief": 617, "sgd+cv": 124, "sgd+svrg": 186,
}


def _k_star_by_hand(run: str) -> int:
    f, g, m, c, pw, p = (STUDY_COUNTS[k] for k in ("F", "G", "M", "C", "PW", "P"))
    update = {"sgd": 2, "momentum": 4, "adam": 13, "adabelief": 15, "msvag": 20}
    factor = {"1": 6, "2": 12, "3": 6}
    optimizer, _, alpha = run.partition("@")
    head, _, modifier = optimizer.partition("+")

    def step(name, modifier, alpha):
        if name == "svag":
            return 128 * (f + g + m) + 9 * p + 3 * pw
        if modifier == "svrg":
            return 256 * (f + g) + 7 * p
        if modifier == "cv":
            return 128 * (2 * (f + g + m) + c) + 19 * p + 8 * pw
        if modifier.startswith("sngrad"):
            digit = modifier[-1]
            rms = 2 if digit in "13" and not alpha else 0
            return 128 * (f + g + m) + (update[name] + factor[digit] + rms) * p + 3 * pw
        return 128 * (f + g) + update[name] * p

    anchor = 8000 * (f + g) + 8 * p
    base = {"svag": "sgd", "msvag": "sgd", "adabelief": "adam"}.get(head, head)
    budget = 620 * step(base, "", "")
    cost = step(head, modifier, alpha)
    anchored = modifier in ("cv", "svrg")
    t = 0
    while (t + 1) * cost + (t // 62 + 1) * anchor * anchored <= budget:
        t += 1
    return t


@pytest.mark.parametrize("run", sorted(DEFAULT_K_STAR))
def test_the_default_profiles_budget_steps_are_pinned(run):
    import yaml

    runs = yaml.safe_load(open("config/default.yaml"))["optimizers"]
    # a schedule's arm counts as its run does: the schedule changes no FLOP
    assert set(DEFAULT_K_STAR) == {r.partition("~")[0] for r in runs}
    assert costs.forward_flops(STUDY) == STUDY_COUNTS["F"]
    assert costs.backward_flops(STUDY) == STUDY_COUNTS["G"]
    assert costs.moment_flops(STUDY) == STUDY_COUNTS["M"]
    assert costs.co_moment_flops(STUDY) == STUDY_COUNTS["C"]
    assert _k_star_by_hand(run) == DEFAULT_K_STAR[run]
    assert costs.budget_step(parse_run(run), STUDY, 8000, 128, 10, 1).step == DEFAULT_K_STAR[run]


def test_anchor_is_one_forward_and_backward_over_the_training_split():
    # one chunk sum of P; three chunks
    assert costs.anchor_flops(parse_run("sgd+svrg"), TINY, 10) == 10 * 74 + 14
    assert costs.anchor_flops(parse_run("sgd+cv"), TINY, 2049) == 2049 * 74 + 3 * 14
    assert costs.anchor_flops(parse_run("sgd+sngrad1"), TINY, 10) == 0
    # epoch: S = 10 // 4 = 2 steps and the anchor every second epoch
    assert costs.epoch_flops(parse_run("sgd+svrg"), TINY, 10, 4, 2) == 2 * 690 + 754 / 2


def test_moment_floor_is_one_extra_weight_gradient_product():
    assert round(costs.moment_floor(STUDY), 2) == 1.50
    assert round(costs.moment_floor(DEEP), 2) == 1.37
    # the full counts (elementwise work included) stay within 2 % of the floor
    for widths, floor in ((STUDY, 1.50), (DEEP, 1.37)):
        ratio = costs.cost_ratio(parse_run("sgd+sngrad1"), parse_run("sgd"), widths, 8000, 128)
        assert floor <= round(ratio, 2) <= floor + 0.02


def test_counts_are_integers_and_the_same_in_a_fresh_process():
    here = [costs.step_flops(parse_run(r), DEEP, 128) for r in ("sgd", "sgd+cv", "svag")]
    assert all(isinstance(v, int) for v in here)
    code = ("from sngrad import costs; from sngrad.names import parse_run; import sys; "
            "print([costs.step_flops(parse_run(r), [784, 1024, 1024, 1024, 10], 128) "
            "for r in ('sgd', 'sgd+cv', 'svag')]); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == str(here)
    assert out[1] == "False"  # the cost model never imports jax


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(SngradError, match="widths"):
        costs.step_flops(parse_run("sgd"), [784], 128)
    with pytest.raises(SngradError, match="batch"):
        costs.step_flops(parse_run("sgd"), TINY, 0)
    with pytest.raises(SngradError, match="unknown"):
        parse_run("sgd+sngrad9")  # a run name is parsed before it is counted
    with pytest.raises(SngradError, match="batch size 20"):
        costs.budget_step(parse_run("sgd+svrg"), TINY, 10, 20, 3)


# ----------------------------------------------------------------------------- budget step


def test_budget_step_by_hand():
    # S = 2 steps per epoch, 3 epochs: sgd spends 6 x 324 = 1944. svrg spends 690 per step
    # and 754 per anchor (before epochs 0, 1, 2): C(1) = 1444 <= 1944 < C(2) = 2134.
    b = costs.budget_step(parse_run("sgd+svrg"), TINY, 10, 4, 3)
    assert (b.base, b.step, b.steps_total, b.budget_flops, b.run_flops) == (
        "sgd", 1, 6, 1944, 1444)
    assert not b.capped and b.epochs == 0.5


def test_budget_step_is_the_last_affordable_step():
    for run in ("sgd+sngrad1", "sgd+sngrad2@0.05", "svag", "msvag", "sgd+cv", "sgd+svrg",
                "adam+sngrad1", "momentum+sngrad1", "adabelief"):
        run = parse_run(run)
        b = costs.budget_step(run, STUDY, 8000, 128, 10, 1)

        def spent(t, run=run):
            return costs.cumulative_flops(run, STUDY, 8000, 128, 1, t)

        assert spent(b.step) == b.run_flops <= b.budget_flops < spent(b.step + 1)
    # 784-64-10: F = 101810, G = 103080, M = 102850, P_W = 50816, P = 50890; S = 62.
    # sgd: 128 (F + G) + 2 P = 26327700 per step, 620 steps: budget 16323174000.
    # sgd+sngrad1 (rms): 128 (F + G + M) + (2 + 6 + 2) P + 3 P_W = 40052068 per step, and
    # 16323174000 / 40052068 = 407.55 (408 for the absolute sgd+sngrad1@a, 39950288 per step)
    assert costs.budget_step(parse_run("sgd+sngrad1"), STUDY, 8000, 128, 10).step == 407
    assert costs.budget_step(parse_run("sgd+sngrad1@0.5"), STUDY, 8000, 128, 10).step == 408
    assert costs.budget_step(parse_run("sgd+cv"), STUDY, 8000, 128, 10).step == 124


def test_a_base_meets_its_own_budget_at_its_last_step():
    b = costs.budget_step(parse_run("adam"), STUDY, 8000, 128, 10)
    assert (b.base, b.step, b.steps_total, b.capped) == ("adam", 620, 620, False)
    assert b.budget_flops == b.run_flops == 620 * costs.step_flops(parse_run("adam"), STUDY, 128)


def test_a_layer_of_width_one_is_counted():
    # 3 -> 1 -> 2: products 6 + 4, bias adds 1 + 2, one ReLU of 1, log-softmax 4 x 2
    assert costs.forward_flops([3, 1, 2]) == 6 + 4 + 1 + 2 + 1 + 8


# ----------------------------------------------------------------------------- the engine


SPEC = spec_dict(hidden=[6], epochs=2)
B = 16  # 6 steps per epoch


def _params_after(splits, optimizer, config, steps, hp):
    """The parameters of one run after ``steps`` steps, by a plain loop over the engine's
    batches (no vmap, no scan)."""
    init_key, shuffle_key = engine.run_keys(config)
    params = mlp_init(jnp.asarray(init_key), [splits.x_train.shape[1], 6, 3])
    step = jax.jit(make_step(parse_run(optimizer), backend="dense", batch_size=B,
                             schedule="constant", total_steps=0, diagnostics_on=False))
    opt_state = step.init(params, hp)
    per_epoch = len(splits.y_train) // B
    data = {"x_train": jnp.asarray(splits.x_train), "y_train": jnp.asarray(splits.y_train)}
    data["idx_train"], data["mask_train"] = (jnp.asarray(a) for a in
                                             engine._chunk_index(len(splits.y_train)))
    snapshot = None
    for t in range(steps):
        epoch, i = divmod(t, per_epoch)
        if i == 0 and step.kind in ("cv", "svrg"):
            snapshot = (params, engine._full_gradient(MLP, params, data["x_train"], data["y_train"],
                                                      data["idx_train"], data["mask_train"]))
        order = jax.random.permutation(jax.random.fold_in(jnp.asarray(shuffle_key), epoch),
                                       len(splits.y_train))
        rows = order[i * B:(i + 1) * B]
        params, opt_state, _ = step(params, opt_state, (data["x_train"][rows],
                                                         data["y_train"][rows]), hp, snapshot)
    return params


@pytest.mark.parametrize(("optimizer", "k_star"), [("sgd+sngrad1", 4), ("sgd+svrg", 9)])
def test_engine_evaluates_the_parameters_after_exactly_k_star_steps(optimizer, k_star):
    splits = toy_splits()
    spec = parse_spec(SPEC)
    configs = [RunConfig(0.1, None, 0.5 if "sngrad" in optimizer else None, s) for s in (1, 2)]
    result = run_sweep(splits, parse_run(optimizer), B, spec, configs, TRAIN_MODE,
                       budget_step=k_star)
    hp = {"learning_rate": jnp.float32(0.1)}
    if "sngrad" in optimizer:
        hp["alpha"] = jnp.float32(0.5)
    for j, config in enumerate(configs):
        params = _params_after(splits, optimizer, config, k_star, hp)
        for name in ("val", "test"):
            x, y = getattr(splits, f"x_{name}"), getattr(splits, f"y_{name}")
            idx, mask = engine._chunk_index(len(y))
            loss, acc = engine._evaluate(MLP, params, jnp.asarray(x), jnp.asarray(y), idx, mask)
            # the same hits: the two programs divide by n in different ways
            assert round(result.budget[f"{name}_accuracy"][j] * len(y)) == round(
                float(acc) * len(y))
            # the vmapped, scanned program and this loop may round the last bits differently
            assert result.budget[f"{name}_loss"][j] == pytest.approx(float(loss), rel=1e-5)


def test_budget_at_the_last_step_equals_the_final_epoch():
    splits = toy_splits()
    spec = parse_spec(SPEC)
    configs = [RunConfig(0.1, None, None, s) for s in (1, 2)]
    result = run_sweep(splits, parse_run("sgd"), B, spec, configs, TRAIN_MODE, budget_step=12)
    for key in ("val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        np.testing.assert_array_equal(result.budget[key], result.records[key][-1])


def test_sparse_diagnostics_leave_the_training_unchanged():
    splits = toy_splits()
    spec = parse_spec(SPEC)
    configs = [RunConfig(0.1, None, None, s) for s in (1, 2)]
    every = run_sweep(splits, parse_run("sgd+cv"), B, spec, configs, Mode(("val",), (), True, 1))
    sparse = run_sweep(splits, parse_run("sgd+cv"), B, spec, configs, Mode(("val",), (), True, 4))
    for key in ("train_loss", "val_loss", "val_accuracy", "lambda_median"):
        np.testing.assert_array_equal(every.records[key], sparse.records[key])
    # the variance ratio is averaged over steps 0 and 4 of each epoch instead of all six
    assert not np.array_equal(every.records["variance_ratio"], sparse.records["variance_ratio"])
    assert np.all(np.isfinite(sparse.records["variance_ratio"]))


def test_lean_svrg_step_takes_the_update_of_the_full_control_variate_step():
    splits = toy_splits()
    x, y = jnp.asarray(splits.x_train[:B]), jnp.asarray(splits.y_train[:B])
    params = mlp_init(jax.random.PRNGKey(0), [5, 6, 3])
    snap = mlp_init(jax.random.PRNGKey(1), [5, 6, 3])
    anchor = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    hp = {"learning_rate": jnp.float32(0.1)}
    step = jax.jit(make_step(parse_run("sgd+svrg"), backend="dense", batch_size=B,
                             schedule="constant", total_steps=0, diagnostics_on=False))
    lean, _, record = step(params, step.init(params, hp), (x, y), hp, (snap, anchor))
    # the reference: the full CVStats and every keyword, as the step computed them before
    # (jitted too, so that both are compiled alike)
    opt = build_optimizer("sgd+svrg", 0.1)

    @jax.jit
    def full_step(params):
        cv = stats.dense_cv_stats(params, snap, x, y)
        updates, _ = opt.update(cv.mean, opt.init(params), params, snap_mean=cv.snap_mean,
                                snap_var=cv.snap_var, cov=cv.cov, anchor=anchor)
        return optax.apply_updates(params, updates), cv.loss

    full, loss = full_step(params)
    # Same maths, but XLA fuses the bias sums differently once the variances are gone: the
    # parameters agree to float32 rounding (observed: 1-2 ulp), not bit for bit.
    for a, b in zip(jax.tree.leaves(lean), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
    assert float(record["loss"]) == float(loss)


# ----------------------------------------------------------------------------- train command


def test_train_writes_budget_rows(tmp_path):
    splits = toy_splits()
    data = tmp_path / "toy.npz"
    save_splits(splits, data)
    best = tmp_path / "best.json"
    best.write_text('{"optimizer": "sgd+svrg", "run": "sgd+svrg", "batch_size": 16, '
                    '"learning_rate": 0.1, "momentum": null, "alpha": null, '
                    '"all_diverged": false}')
    out = tmp_path / "run"
    train(data, parse_run("sgd+svrg"), B, parse_spec(SPEC), best, out)
    with open(out / "budget.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == BUDGET_COLUMNS
    expected = costs.budget_step(parse_run("sgd+svrg"), [5, 6, 3], 96, B, 2)
    assert [int(r["seed"]) for r in rows] == [1, 2]
    assert {int(r["budget_step"]) for r in rows} == {expected.step}
    assert {r["base"] for r in rows} == {"sgd"}


# ----------------------------------------------------------------------------- config cost


def test_profile_stages_of_the_smoke_profile():
    from sngrad.config import load_profile

    stages = {s.name: s for s in costs.profile_stages(load_profile("config/smoke.yaml"))}
    # digits: 1294 training examples (1438 less 144 for validation), B = 64 -> 20 steps per
    # epoch, 2 epochs; 3 runs; tuning, settings of round 0 and the refinement: sgd and
    # sgd+sngrad2@0.05 3 rates + 2, sgd+sngrad1 3 steps x 3 alphas + 2; x 2 seeds
    assert stages["tuning"].example_steps == (5 + 11 + 5) * 2 * 40 * 64
    assert stages["final training"].example_steps == 3 * 2 * 40 * 64
    assert stages["reference"].example_steps == 40 * 64
    assert stages["reference"].flops == 40 * costs.step_flops(parse_run("sgd"), [64, 16, 10], 64)
    assert "extension rounds" in stages["tuning"].note and "not counted" in stages["tuning"].note
    # one tuning run: 40 steps and one validation pass over the 144 validation examples
    profile = load_profile("config/smoke.yaml")
    assert costs.tuning_trial_flops(profile, "digits", parse_run("sgd+sngrad1"), 64) == (
        40 * costs.step_flops(parse_run("sgd+sngrad1"), [64, 16, 10], 64)
        + 144 * costs.forward_flops([64, 16, 10]))
    assert [s.jobs for s in stages.values()] == [3, 3, 1, 1]
    # programs: a tuning job runs two (round 0, the refinement), of 3 x 2, 9 x 2 or 3 x 2 runs
    # then 2 x 2; a training job one of the 2 final seeds; the reference one of one run
    assert [s.program_steps for s in stages.values()] == [3 * 2 * 40, 3 * 40, 40, 0]
    assert [s.run_steps for s in stages.values()] == [(5 + 11 + 5) * 2 * 40, 3 * 2 * 40, 40, 0]


def test_a_profile_without_the_noise_study_counts_no_reference_run_and_no_noise_jobs():
    from sngrad.config import load_profile

    profile = load_profile("config/smoke.yaml")
    study = {s.name: s for s in costs.profile_stages(profile)}
    profile["noise"] = {"enabled": False}
    without = {s.name: s for s in costs.profile_stages(profile)}
    assert list(without) == ["tuning", "final training"]
    assert all(without[name] == study[name] for name in without)


def test_the_time_estimate_adds_the_per_step_overhead_of_every_program_and_run_step():
    from sngrad.config import load_profile
    from sngrad.profile import DEFAULT_PROFILE, read_yaml

    profile = load_profile("config/smoke.yaml")
    profile["train"]["epochs"] = 1000000  # a tiny network trained long: steps, not FLOPs
    stages = costs.profile_stages(profile)
    flops = sum(s.flops for s in stages)
    programs, runs = sum(s.program_steps for s in stages), sum(s.run_steps for s in stages)
    overhead = costs.StepOverhead(per_step=2e-6, per_run=5e-6)
    default = read_yaml(DEFAULT_PROFILE)
    text, core_hours = costs.cost_report(profile, 1e10, 2, overhead, default)
    assert core_hours == pytest.approx((flops / 1e10 + 2e-6 * programs + 5e-6 * runs) / 3600)
    assert "2.0 us + 5.0 us x K per step of a program training K runs" in text
    assert f"{core_hours:,.2f} core-hours" in text
    minutes = costs.benchmark_minutes(profile, default)
    assert minutes == costs.DEFAULT_BENCHMARK_MIN * costs.benchmark_repeats(
        profile) / costs.benchmark_repeats(default)
    assert "benchmark (`make bench`, not part of a run): 3 timed repeats" in text
    without, hours = costs.cost_report(profile, None, 2)
    assert math.isnan(hours) and "core-hours" not in without and "benchmark" not in without


def test_the_per_step_overhead_is_calibrated_on_the_engines_program():
    from sngrad.config import load_profile

    overhead = costs.calibrate_step_overhead(load_profile("config/smoke.yaml"), steps=32,
                                             epochs=2)
    assert math.isfinite(overhead.per_step) and math.isfinite(overhead.per_run)
    assert overhead.per_step >= 0 and overhead.per_run >= 0
    assert 0 < overhead.seconds(1, 16) < 1.0  # a step of 16 tiny runs: well under a second


def test_profile_noise_batch_counts_agree_with_the_noise_study():
    from sngrad.noise.measure import n_batches_for

    for b in (8, 512, 1024, 4096):
        assert costs.noise_batches(b, 32) == n_batches_for(b, 32)


def test_config_cost_prints_without_jax_and_never_asks_outside_a_terminal(monkeypatch):
    code = ("import sys; from sngrad.config import cli; "
            "cli(['cost', 'config/paper.yaml', '--no-calibrate']); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, stdin=subprocess.DEVNULL).stdout
    assert "final training" in out and "GPU:" in out
    assert out.strip().splitlines()[-1] == "False"
    monkeypatch.setenv("CI", "true")
    from sngrad.config import interactive

    assert not interactive()


def test_host_median_equals_the_device_median_of_each_layer():
    from sngrad.train import diagnostics

    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    lam = [(jax.random.uniform(keys[0], (3, 5, 4)), jnp.zeros((3, 4))),
           (jax.random.uniform(keys[1], (3, 4, 3)), jnp.zeros((3, 3)))]
    device = jax.vmap(lambda tree: diagnostics.lambda_median(tree))(lam)
    host = engine._host_median([np.asarray(w) for w, _ in lam])
    np.testing.assert_array_equal(host, np.asarray(device))
    assert host.dtype == np.float32


@pytest.mark.parametrize("name", ["paper", "scale"])
def test_the_readme_quotes_the_counted_cost_of_the_paper_and_scale_profiles(name):
    """The README's figures for the paper and scale profiles are what `config cost` counts
    now: a change to the profile or to the counting that leaves the README behind fails."""
    import re

    from sngrad.config import load_profile

    root = ROOT
    stages = costs.profile_stages(load_profile(root / "config" / f"{name}.yaml"))
    flops = sum(s.flops for s in stages)
    readme = " ".join((root / "README.md").read_text().split())
    if name == "paper":
        jobs, steps = sum(s.jobs for s in stages), sum(s.example_steps for s in stages)
        quoted = re.search(r"counts (\S+) jobs, (\S+) example-steps and (\S+) FLOPs", readme)
        assert quoted, "the README's paper-profile cost sentence is gone"
        assert quoted.groups() == (f"{jobs:,}", f"{steps:.2g}".replace("+", ""),
                                   f"{flops:.3g}".replace("+", ""))
        assert f"about {flops / costs.GPU_SUSTAINED_FLOPS / 3600:,.0f} GPU-hours" in readme
    else:
        assert f"`config cost` counts {flops:.2g} FLOPs".replace("+", "") in readme
        assert f"about {flops / costs.GPU_SUSTAINED_FLOPS / 60:.0f} min at" in readme
