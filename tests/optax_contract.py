"""Shared pieces of the Optax contract tests run on every sparsejax transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def multisteps_and_reference(inner: optax.GradientTransformation, params, grads: list, k: int = 2,
                             jit: bool = False):
  """``optax.MultiSteps(inner, k)`` over ``grads``, and what it must equal.

  The reference applies ``inner`` once per ``k`` consecutive micro-batch
  gradients, to their mean. A transform that counts micro-batches instead of
  optimizer steps, or keeps state across the accumulation, makes the two differ.

  Returns:
    ``(params after MultiSteps, MultiSteps's final state, params of the reference)``.
  """
  if len(grads) % k:
    raise ValueError(f"len(grads)={len(grads)} must be a multiple of k={k}")
  tx = optax.MultiSteps(inner, every_k_schedule=k)
  update = jax.jit(tx.update) if jit else tx.update
  ref_update = jax.jit(inner.update) if jit else inner.update
  p, state = params, tx.init(params)
  for g in grads:
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
  q, ref_state = params, inner.init(params)
  for a in range(0, len(grads), k):
    mean = jax.tree.map(lambda *xs: sum(xs) / k, *grads[a:a + k])
    u, ref_state = ref_update(mean, ref_state, q)
    q = optax.apply_updates(q, u)
  return p, state, q


def run_updates(tx: optax.GradientTransformation, params, grads: list, jit: bool = False):
  """Applies ``tx`` to ``grads`` one after another from ``params``: ``(params, state)``."""
  update = jax.jit(tx.update) if jit else tx.update
  p, state = params, tx.init(params)
  for g in grads:
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
  return p, state


def assert_trees_close(actual, desired, rtol: float = 1e-6, atol: float = 1e-7):
  """``np.testing.assert_allclose`` on every pair of leaves (the structures must match)."""
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), actual, desired)


def nnx_optimizer_step(model: nnx.Module, tx: optax.GradientTransformation, x):
  """One jitted ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` step on the loss ``mean(model(x)²)``.

  The model is updated in place. Returns ``(optimizer, grads)`` with the
  gradients at the parameters before the step, to build the expected update.
  """
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, opt):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    opt.update(model, grads)
    return grads

  return opt, step(model, opt)
