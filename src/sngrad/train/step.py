"""THE train step: one optimizer update on one batch, what the engine trains with and what the
benchmark times.

``step(params, opt_state, batch, hparams, snapshot=None) -> (params, opt_state, record)``,
built for one parsed run (:class:`sngrad.names.RunName`), which says what the step computes
(``step_kind``) and how alpha is read (``alpha_reference``):

- ``batch = (x, y)``; ``hparams`` maps ``learning_rate`` and, where the optimizer takes them,
  ``momentum`` and ``alpha`` to scalars, which may be traced (a vmapped sweep); the run's
  ``alpha_reference`` says whether alpha is raw ("absolute": ``@alpha`` runs, II) or relative
  to each step's RMS sigma ("rms": tuned I and III, :func:`sngrad.transforms.step_alpha`);
- ``snapshot = (snap_params, anchor)`` for control-variate optimizers (``+cv``, ``+svrg``):
  the parameters at the last snapshot and the full-data mean gradient there;
- ``record`` holds the batch's mean ``loss`` and, when built with ``diagnostics=True``, the
  per-layer (weights only) arrays of :data:`sngrad.train.diagnostics.STEP_COLUMNS`: the mean factor
  f and the share of coordinates with f < 1 of a shrinking optimizer (sngrad variants at the
  step's alpha, svag), and the control variate's variance ratio; NaN where they do not apply.

What a step computes, by optimizer (the network's cores, :mod:`sngrad.train.network`: the
MLP's from :mod:`sngrad.stats`, a CNN's from the flax fast path; no input checks,
jit-friendly): plain optimizers only the loss and its gradient; +sngrad and svag
``(loss, mean, var)`` from the spec's backend; +cv :class:`sngrad.stats.CVStats` at the
parameters and the snapshot on the same batch; +svrg only the two batch means (its
coefficient is 1, so it needs no variance or covariance; the diagnostics compute the
CVStats on the steps that record them). The counted FLOPs of each are in
:mod:`sngrad.costs`.

Learning-rate schedules, the same for every optimizer: ``constant`` (lr) and ``cosine``
(lr * (1 + cos(pi t / T)) / 2 at step t of T, reaching 0 after the last step), applied through
the optimizer's own step counter, so that a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax
from jax import lax

from sngrad.architecture import Architecture
from sngrad.architecture import mlp as mlp_architecture
from sngrad.names import RunName
from sngrad.optimizers import build_optimizer
from sngrad.train import diagnostics, network

# the MLP's cores read the widths from the parameters, so any MLP stands for all of them
MLP = mlp_architecture([1, 1])


def learning_rate_schedule(learning_rate, schedule: str, total_steps: int):
    """The learning rate (``constant``) or an optax schedule of the step count (``cosine``)."""
    if schedule == "constant":
        return learning_rate
    total = max(int(total_steps), 1)

    def cosine(count):
        t = jnp.minimum(count, total).astype(jnp.float32)
        return learning_rate * 0.5 * (1.0 + jnp.cos(math.pi * t / total))

    return cosine


def make_optimizer(run: RunName, hparams: dict, *, batch_size: int, schedule: str,
                   total_steps: int) -> optax.GradientTransformationExtraArgs:
    """The run's registry optimizer with the (possibly traced) hyper-parameters of
    ``hparams``, reading alpha as the run does (``run.alpha_reference``)."""
    return build_optimizer(
        run,
        learning_rate_schedule(hparams["learning_rate"], schedule, total_steps),
        momentum=hparams.get("momentum") if run.has_momentum else None,
        alpha=hparams.get("alpha") if run.variant else None,
        batch_size=batch_size if run.base == "svag" else None,
        alpha_reference=run.alpha_reference,
    )


def make_step(run: RunName, *, backend: str, batch_size: int, schedule: str,
              total_steps: int, diagnostics_on: bool = True,
              arch: Architecture | None = None):
    """Build the step of the module docstring for one parsed run (not jitted: callers jit,
    vmap or scan it), on the network ``arch`` (None: an MLP, whose cores take any widths).

    ``run.alpha_reference`` is how a +sngrad optimizer reads ``hparams["alpha"]``
    (:func:`sngrad.optimizers.build_optimizer`; "absolute" for every other); the
    diagnostics' factor takes the same per-step alpha as the update.

    The step takes an optional last argument ``diagnose``, a boolean scalar that must not be
    batched (the engine passes ``step_index % k == 0``): where it is False the diagnostics
    are skipped (a ``lax.cond``, so under ``vmap`` nothing is computed) and the record holds
    NaN. It is ignored when the step is built with ``diagnostics_on=False``.
    """
    kind = run.step_kind
    arch = arch if arch is not None else MLP
    core = {"cv": network.cv_moments, "svrg": network.cv_moments,
            "moments": network.moments}.get(kind)
    core = core(arch, backend) if core is not None else None
    mean_core = network.mean(arch, backend)
    loss_and_grad = network.loss_and_grad(arch)
    layers_of = len

    def opt_of(hparams):
        return make_optimizer(run, hparams, batch_size=batch_size, schedule=schedule,
                              total_steps=total_steps)

    def diagnosed(compute, layers, diagnose):
        """``compute()`` where ``diagnose`` (unbatched) holds, else the NaN record."""
        if diagnose is None:
            return diagnostics.complete_record(compute(), layers)
        nan = diagnostics.complete_record({}, layers)
        return lax.cond(diagnose, lambda: diagnostics.complete_record(compute(), layers),
                        lambda: nan)

    def step(params, opt_state, batch, hparams, snapshot=None, diagnose=None):
        x, y = batch
        opt = opt_of(hparams)
        record = {}
        layers = layers_of(params)
        if kind == "plain":
            loss, grad = loss_and_grad(params, x, y)
            updates, opt_state = opt.update(grad, opt_state, params)
            if diagnostics_on:
                record = diagnostics.complete_record({}, layers)
        elif kind == "moments":
            loss, grad, var = core(params, x, y)
            updates, opt_state = opt.update(grad, opt_state, params, grad_var=var)
            if diagnostics_on:
                record = diagnosed(lambda: diagnostics.shrink_record(
                    run, grad, var, hparams.get("alpha"), batch_size), layers, diagnose)
        elif kind == "svrg":
            # SVRG's update needs the two batch means and the anchor only; the moments are
            # computed for the diagnostics, on the steps that record them.
            snap, anchor = snapshot
            loss, grad = mean_core(params, x, y)
            _, snap_mean = mean_core(snap, x, y)
            updates, opt_state = opt.update(grad, opt_state, params, snap_mean=snap_mean,
                                            anchor=anchor)
            if diagnostics_on:
                lam = diagnostics.cv_lambda(opt_state)
                record = diagnosed(lambda: diagnostics.cv_record(core(params, snap, x, y), lam),
                                   layers, diagnose)
        else:
            snap, anchor = snapshot
            cv = core(params, snap, x, y)
            loss, grad = cv.loss, cv.mean
            updates, opt_state = opt.update(
                grad, opt_state, params, snap_mean=cv.snap_mean, snap_var=cv.snap_var,
                cov=cv.cov, anchor=anchor)
            if diagnostics_on:
                lam = diagnostics.cv_lambda(opt_state)
                record = diagnosed(lambda: diagnostics.cv_record(cv, lam), layers, diagnose)
        record["loss"] = loss
        return optax.apply_updates(params, updates), opt_state, record

    step.init = lambda params, hparams: opt_of(hparams).init(params)
    step.kind = kind
    return step
