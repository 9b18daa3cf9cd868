"""Step time and compiled peak memory of sngrad on a flax CNN (DeepOBS fmnist_2c2d style).

Model: the study's fmnist_2c2d (sngrad.convnet.ConvNet): conv 5x5 32 ch (SAME) + ReLU, max-pool,
conv 5x5 64 ch + ReLU, max-pool,
dense 1024 + ReLU, dense 10; 28x28x1 inputs, B = 128 (3.27 M parameters). Four jitted
training steps of the same model in one process, each ending with an optax SGD update:

  sgd          value_and_grad of the mean loss (the baseline)
  sngrad fast  flax_moments(backend="auto"): every layer on the fast path, then
               noise_informed("I") in front of SGD
  vmap(grad)   flax_moments(backend="vmap"): all B per-example gradients, then the same
  aggregating  optax.experimental.aggregating on vmap(grad) per-example gradients
               (mean and sum of squared deviations), then noise_informed and SGD

Time: median of ``--repeats`` steps after one warm-up; memory: XLA's compiled memory
analysis (temporaries + arguments + outputs - aliased). The load average is printed before
and after: a figure worth quoting comes from a run with the machine to itself.

    python benchmarks/flax_cnn.py [--repeats 10] [--batch 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from optax.experimental import aggregating

from sngrad.architecture import build
from sngrad.convnet import ConvNet, example_losses
from sngrad.moments import fast_path_plan, flax_moments
from sngrad.transforms import noise_informed

# the study's own fmnist_2c2d (sngrad.architecture), an nnx.Module like any user's
FMNIST_2C2D = build({"kind": "fmnist_2c2d"}, (28, 28), 10)


loss_fn = example_losses


def build_steps(graphdef, rest):
    sgd = optax.sgd(0.01)
    sn = optax.chain(noise_informed("I", 1.0), optax.sgd(0.01))

    def model_of(params):
        return nnx.merge(graphdef, params, rest)

    def sgd_step(params, state, batch):
        def mean_loss(p):
            return jnp.mean(loss_fn(model_of(p), batch))
        loss, grads = jax.value_and_grad(mean_loss)(params)
        updates, state = sgd.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    def moments_step(backend):
        def step(params, state, batch):
            m = flax_moments(model_of(params), loss_fn, batch, backend=backend)
            updates, state = sn.update(m.mean, state, params, grad_var=m.var)
            return optax.apply_updates(params, updates), state, m.loss
        return step

    agg = aggregating.get_per_element_mean_and_sum_sq_diff_grads()

    def aggregating_step(params, state, batch):
        def one(p, x, y):
            return loss_fn(model_of(p), (x[None], y[None]))[0]
        losses, per_example = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0))(
            params, *batch)
        (mean, aux), _ = agg.update(per_example, agg.init(params), params)
        var = jax.tree.map(lambda s: s / aux["sample_size"], aux["sum_sq_diff_grads"])
        updates, state = sn.update(mean, state, params, grad_var=var)
        return optax.apply_updates(params, updates), state, jnp.mean(losses)

    return {
        "sgd": (sgd_step, sgd),
        "sngrad fast": (moments_step("auto"), sn),
        "vmap(grad)": (moments_step("vmap"), sn),
        "aggregating": (aggregating_step, sn),
    }


def peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
            - m.alias_size_in_bytes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)

    model = ConvNet(FMNIST_2C2D, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    k1, k2 = jax.random.split(jax.random.key(1))
    batch = (jax.random.normal(k1, (args.batch, 28 * 28)),
             jax.random.randint(k2, (args.batch,), 0, 10))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    plan = fast_path_plan(model, loss_fn, batch)
    # step times mean nothing on a busy machine: say how busy it was, before and after
    print("load average (1, 5, 15 min) before: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"fmnist_2c2d: {n_params} parameters, B = {args.batch}, jax {jax.__version__}, "
          f"{jax.devices()[0].platform}; fast layers {', '.join(plan.fast)}; "
          f"fallback {plan.fallback or 'none'}")
    rows = []
    for name, (step, opt) in build_steps(graphdef, rest).items():
        state = opt.init(params)
        jitted = jax.jit(step)
        compiled = jitted.lower(params, state, batch).compile()
        out = compiled(params, state, batch)
        jax.block_until_ready(out)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(params, state, batch))
            times.append(time.perf_counter() - start)
        rows.append((name, statistics.median(times), peak_bytes(compiled)))
    base_t, base_m = rows[0][1], rows[0][2]
    print(f"{'step':<12} {'ms':>8} {'x sgd':>7} {'peak MiB':>9} {'x sgd':>6}")
    for name, t, mem in rows:
        print(f"{name:<12} {t * 1e3:8.1f} {t / base_t:7.2f} {mem / 2**20:9.1f} "
              f"{mem / base_m:6.2f}")
    print("load average (1, 5, 15 min) after: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
