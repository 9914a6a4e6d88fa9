r"""Cost of gradual magnitude pruning, as ratios measured in one run.

  python scripts/bench_pruning.py            # both tables
  python scripts/bench_pruning.py --only step --repeats 30

Table 1: LeNet-5 train step (batch 128, MNIST-shaped input) with
``magnitude_pruning`` last in the chain vs the plain optimizer, on ordinary
steps (masks only applied) and on mask-update steps (masks recomputed). The
two variants are timed interleaved, so machine noise hits both alike.

Table 2: one global magnitude threshold over a params tree (sparsejax's
bisection on the float bit pattern) vs a full sort of all magnitudes, at
1M and 10M parameters; both must give the same mask.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sparsejax import masks as masks_lib
from sparsejax import models
from sparsejax import train
from sparsejax.optim import magnitude_pruning


def _time(fn, *args, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - t)
  return out


def bench_step(repeats: int, batch_size: int = 128) -> None:
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(batch_size, 28, 28, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, size=batch_size), jnp.int32)}
  sgd = optax.sgd(0.05, momentum=0.9)
  variants = {
      "plain SGD": sgd,
      # begin_step far away: masks applied every step, never recomputed.
      "GMP, ordinary step": optax.chain(sgd, magnitude_pruning(
          0.9, begin_step=10**8, end_step=10**8 + 1, update_every=1)),
      # update_every=1 inside the ramp: masks recomputed on every step.
      "GMP, mask-update step (uniform)": optax.chain(sgd, magnitude_pruning(
          0.9, begin_step=0, end_step=10**8, update_every=1)),
      "GMP, mask-update step (global)": optax.chain(sgd, magnitude_pruning(
          0.9, begin_step=0, end_step=10**8, update_every=1, distribution="global")),
  }
  times, _ = train.time_train_steps(
      variants, lambda: models.get_model("lenet5", rngs=nnx.Rngs(0)), batch, repeats)
  base = np.median(times["plain SGD"])
  print(f"\nLeNet-5 train step, batch {batch_size}, median of {repeats} interleaved repeats")
  print("| variant | ms/step | ratio to plain SGD |\n|---|---|---|")
  for name in variants:
    med = np.median(times[name])
    print(f"| {name} | {1e3 * med:.2f} | {med / base:.3f} |")


def _sort_mask(params, sparsity):
  """Reference: a full sort of every magnitude."""
  flat = jnp.concatenate([jnp.abs(x).ravel() for x in jax.tree.leaves(params)])
  k = int(np.floor(sparsity * flat.size))
  thr = jnp.sort(flat)[k - 1]
  return jax.tree.map(lambda x: jnp.abs(x) > thr, params)


def bench_threshold(repeats: int) -> None:
  print(f"\nGlobal magnitude threshold at sparsity 0.9, median of {repeats} repeats")
  print("| params | leaves | bisection ms | full sort ms | speedup | same mask |\n|---|---|---|---|---|---|")
  for total in (1_000_000, 10_000_000):
    rng = np.random.default_rng(total)
    shapes = [(3, 3, 64, 64), (3, 3, 128, 128), (3, 3, 256, 256), (512, 512)]
    sizes = np.array([int(np.prod(s)) for s in shapes])
    scale = total / sizes.sum()
    params, n = {}, 0
    for i, s in enumerate(shapes):
      s = s[:-1] + (max(1, int(round(s[-1] * scale))),)
      params[f"layer{i}"] = {"kernel": jnp.asarray(rng.normal(size=s), jnp.float32)}
      n += int(np.prod(s))
    ours = jax.jit(lambda p: masks_lib.magnitude(p, 0.9, distribution="global"))
    ref = jax.jit(lambda p: _sort_mask(p, 0.9))
    m1, m2 = ours(params), ref(params)
    same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2)))
    t_ours, t_ref = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
      t_ours += _time(ours, params, repeats=1)
      t_ref += _time(ref, params, repeats=1)
    t1, t2 = np.median(t_ours), np.median(t_ref)
    print(f"| {n:,} | {len(shapes)} | {1e3 * t1:.1f} | {1e3 * t2:.1f} | {t2 / t1:.1f}× | {same} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", choices=("step", "threshold"), default=None)
  parser.add_argument("--repeats", type=int, default=50)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
  if args.only in (None, "step"):
    bench_step(args.repeats)
  if args.only in (None, "threshold"):
    bench_threshold(max(5, args.repeats // 5))


if __name__ == "__main__":
  main()
