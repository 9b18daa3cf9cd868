"""Train a small flax NNX CNN with noise-informed gradients or a control variate.

    python examples/flax_cnn_fashion.py                       # Fashion-MNIST, variant I
    python examples/flax_cnn_fashion.py --method cv --steps 300
    python examples/flax_cnn_fashion.py --dataset digits --steps 5    # offline, 8x8 images

Fashion-MNIST is downloaded on first use (``sngrad.load_dataset``); ``digits`` ships with
scikit-learn. Each step computes the exact per-example gradient moments of the batch with
``sngrad.flax_moments`` (fast path: one forward and one backward pass for Linear and Conv
layers) and hands them to an optax chain.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sngrad


class CNN(nnx.Module):
    def __init__(self, channels: int, side: int, classes: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
        self.out = nnx.Linear(32 * ((side + 1) // 2) ** 2, classes, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.out(h.reshape(h.shape[0], -1))


def loss_fn(model, batch):
    x, y = batch
    return sngrad.cross_entropy(model(x), y)  # per-example losses, shape (B,)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--method", choices=("noise", "cv"), default="noise")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)

    data = sngrad.load_dataset(args.dataset, train_size=None)
    shape = data.meta["shape"]  # (H, W) for grey images, (C, H, W) for colour
    c, h, w = shape if len(shape) == 3 else (1, *shape)
    images = lambda x: jnp.asarray(x.reshape(-1, c, h, w).transpose(0, 2, 3, 1))  # noqa: E731
    x, y, n = images(data.x_train), jnp.asarray(data.y_train), len(data.y_train)
    model = CNN(c, h, data.num_classes, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if args.method == "noise":
        opt = optax.chain(sngrad.noise_informed("I", alpha=10.0), optax.sgd(0.05))
    else:
        opt = optax.chain(sngrad.control_variate("optimal"), optax.sgd(0.05))
    state, snap, anchor = opt.init(params), params, None

    @jax.jit
    def full_grad(p):  # the control variate's anchor: the gradient on all training data
        return jax.grad(lambda q: jnp.mean(loss_fn(nnx.merge(graphdef, q, rest), (x, y))))(p)

    @jax.jit
    def step(params, state, snap, anchor, batch):
        model = nnx.merge(graphdef, params, rest)
        if args.method == "noise":
            m = sngrad.flax_moments(model, loss_fn, batch)
            updates, state = opt.update(m.mean, state, params, grad_var=m.var)
        else:
            m = sngrad.flax_moments(model, loss_fn, batch,
                                    snapshot=nnx.merge(graphdef, snap, rest))
            updates, state = opt.update(m.mean, state, params, snap_mean=m.snap_mean,
                                        snap_var=m.snap_var, cov=m.cov, anchor=anchor)
        return optax.apply_updates(params, updates), state, m.loss

    rng = np.random.default_rng(0)
    for t in range(args.steps):
        if args.method == "cv" and t % 100 == 0:  # a new SVRG snapshot every 100 steps
            snap, anchor = params, full_grad(params)
        idx = rng.choice(n, size=min(args.batch, n), replace=False)
        params, state, loss = step(params, state, snap, anchor, (x[idx], y[idx]))
        if t % 50 == 0 or t == args.steps - 1:
            print(f"step {t:5d}  batch loss {float(loss):.4f}")
    logits = nnx.merge(graphdef, params, rest)(images(data.x_test))
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(data.y_test)))
    print(f"test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
