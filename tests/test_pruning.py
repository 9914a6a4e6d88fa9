"""Gradual magnitude pruning: schedule values and the Optax contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import masks as masks_lib
from sparsejax import schedules
from sparsejax.optim import MagnitudePruningState, find_states, magnitude_pruning
from optax_contract import (assert_trees_close, multisteps_and_reference,
                            nnx_optimizer_step, run_updates)


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32),
               "bias": jnp.asarray(rng.normal(size=(8,)), jnp.float32)},
      "dense": {"kernel": jnp.asarray(rng.normal(size=(32, 10)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=(10,)), jnp.float32)},
  }


def _grads(seed):
  return jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(seed).normal(size=p.shape),
                                            p.dtype), _params())


# ---------------------------------------------------------------------------
# schedules


@pytest.mark.parametrize("step,expected", [
    (0, 0.0), (9, 0.0), (10, 0.0), (15, 0.9 * (1 - 0.5 ** 3)), (18, 0.9 * (1 - 0.2 ** 3)),
    (20, 0.9), (100, 0.9)])
def test_polynomial_sparsity_values(step, expected):
  s = schedules.polynomial_sparsity(0.9, 10, 20)
  np.testing.assert_allclose(float(s(step)), expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(jax.jit(s)(step)), expected, rtol=1e-6, atol=1e-7)


def test_polynomial_sparsity_initial_value():
  s = schedules.polynomial_sparsity(0.8, 0, 10, initial_sparsity=0.2)
  assert float(s(0)) == pytest.approx(0.2)
  assert float(s(5)) == pytest.approx(0.8 + (0.2 - 0.8) * 0.5 ** 3)


@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((np.array([0.5, 1.7]), 0, 10), {}, TypeError, "final_sparsity must be a real scalar"),
    (("0.5", 0, 10), {}, TypeError, "final_sparsity"),
    ((False, 0, 10), {}, TypeError, "final_sparsity"),
    ((0.9, 0, 10), dict(initial_sparsity=float("nan")), ValueError, "initial_sparsity"),
    ((0.9, 0, 10), dict(power=float("nan")), ValueError, "power must be > 0"),
    ((0.9, 0, 10), dict(power="3"), TypeError, "power"),
])
def test_polynomial_sparsity_rejects_bad_arguments(args, kwargs, exc, match):
  """An array sparsity used to be taken for a tracer and gave sparsities above 1; NaN powers NaN."""
  with pytest.raises(exc, match=match):
    schedules.polynomial_sparsity(*args, **kwargs)


def test_is_update_step_grid():
  got = [bool(schedules.is_update_step(t, 3, 12, 4)) for t in range(16)]
  want = [t in (3, 7, 11, 12) for t in range(16)]
  assert got == want


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_sparsity=1.0), "target_sparsity"),
    (dict(target_sparsity=-0.1), "target_sparsity"),
    (dict(end_step=-1), "end_step"),
    (dict(begin_step=5, end_step=2), "end_step must be >= begin_step"),
    (dict(update_every=0), "update_every"),
    (dict(distribution="lognormal"), "distribution"),
    (dict(begin_step=True), r"begin_step must be a non-negative int, got True \(bool\)"),
    (dict(update_every=2.0), r"update_every must be a positive int, got 2.0 \(float\)"),
])
def test_bad_arguments(kwargs, match):
  args = dict(target_sparsity=0.5, begin_step=0, end_step=10, update_every=1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    magnitude_pruning(**args)


def test_numpy_integer_steps_equal_python_ints():
  grads = [_grads(t) for t in range(6)]
  a, _ = run_updates(optax.chain(optax.sgd(0.1), magnitude_pruning(
      0.5, begin_step=1, end_step=3, update_every=2)), _params(), grads)
  b, _ = run_updates(optax.chain(optax.sgd(0.1), magnitude_pruning(
      0.5, begin_step=np.int64(1), end_step=np.int32(3), update_every=np.int64(2))),
      _params(), grads)
  assert_trees_close(a, b, rtol=0, atol=0)
  assert float(np.mean(np.asarray(b["dense"]["kernel"]) == 0)) == 0.5


def test_kth_smallest_abs_rejects_a_bool_rank():
  with pytest.raises(ValueError, match="k must be an integer"):
    masks_lib.kth_smallest_abs(jnp.arange(4.0), True)


def test_update_needs_params():
  tx = magnitude_pruning(0.5, begin_step=0, end_step=1, update_every=1)
  state = tx.init(_params())
  with pytest.raises(ValueError, match="params"):
    tx.update(_params(), state)


# ---------------------------------------------------------------------------
# what the transform computes


def _numpy_prune(x, s):
  """Brute force: zero the floor(s*n) smallest |x|."""
  x = np.asarray(x)
  k = int(math.floor(s * x.size))
  out = x.copy().ravel()
  out[np.argsort(np.abs(out), kind="stable")[:k]] = 0
  return out.reshape(x.shape)


def test_chain_with_sgd_matches_bruteforce():
  params, g = _params(), _grads(1)
  tx = optax.chain(optax.sgd(0.1), magnitude_pruning(0.6, begin_step=0, end_step=0,
                                                     update_every=1))
  updates, state = tx.update(g, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for layer in ("conv", "dense"):
    proposed = np.asarray(params[layer]["kernel"] - 0.1 * g[layer]["kernel"])
    np.testing.assert_allclose(new[layer]["kernel"], _numpy_prune(proposed, 0.6), rtol=1e-6)
    np.testing.assert_allclose(new[layer]["bias"], params[layer]["bias"] - 0.1 * g[layer]["bias"],
                               rtol=1e-6)
  mp = find_states(state, MagnitudePruningState)[0]
  assert mp.masks["conv"]["bias"] is None
  assert int(mp.count) == 1


def test_gradual_run_follows_schedule_and_stays_pruned():
  params = _params()
  begin, end, every, target = 2, 14, 3, 0.8
  sched = schedules.polynomial_sparsity(target, begin, end)
  tx = optax.chain(optax.sgd(0.05), magnitude_pruning(
      target, begin_step=begin, end_step=end, update_every=every))
  state = tx.init(params)
  step_fn = jax.jit(tx.update)
  prev_zero = None
  last_update_sparsity = 0.0
  for t in range(18):
    updates, state = step_fn(_grads(t), state, params)
    params = optax.apply_updates(params, updates)
    k = params["dense"]["kernel"]
    zero = np.asarray(k) == 0
    if bool(schedules.is_update_step(t, begin, end, every)):
      last_update_sparsity = float(sched(t))
    assert zero.sum() == math.floor(np.float32(last_update_sparsity) * k.size), t
    if prev_zero is not None:
      assert not np.any(prev_zero & ~zero), "a pruned weight came back"
    prev_zero = zero
  assert zero.mean() == pytest.approx(math.floor(0.8 * k.size) / k.size)


def test_jit_matches_eager():
  params = _params()
  tx = optax.chain(optax.adam(1e-2), magnitude_pruning(0.5, begin_step=0, end_step=4,
                                                       update_every=2))
  grads = [_grads(t) for t in range(5)]
  p1, _ = run_updates(tx, params, grads)
  p2, _ = run_updates(tx, params, grads, jit=True)
  assert_trees_close(p1, p2)


def test_inject_hyperparams():
  params, g = _params(), _grads(3)
  direct = optax.chain(optax.sgd(0.1), magnitude_pruning(
      0.7, begin_step=0, end_step=0, update_every=1))
  injected = optax.chain(
      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
      optax.inject_hyperparams(magnitude_pruning, static_args=(
          "begin_step", "end_step", "update_every", "distribution", "filter_fn"))(
              target_sparsity=0.7, begin_step=0, end_step=0, update_every=1))
  u1, _ = direct.update(g, direct.init(params), params)
  state = injected.init(params)
  u2, state = jax.jit(injected.update)(g, state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
  assert len(find_states(state, MagnitudePruningState)) == 1


def test_multisteps_counts_optimizer_steps():
  params = _params()
  inner = optax.chain(optax.sgd(0.1), magnitude_pruning(0.5, begin_step=1, end_step=1,
                                                        update_every=1))
  grads = [_grads(t) for t in range(4)]
  p, state, q = multisteps_and_reference(inner, params, grads)
  assert_trees_close(p, q, rtol=1e-5, atol=1e-6)
  assert int(find_states(state, MagnitudePruningState)[0].count) == 2
  assert float(np.mean(np.asarray(p["dense"]["kernel"]) == 0)) == 0.5


class _MLP(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(16, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 4, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.relu(self.fc1(x)))


def test_nnx_optimizer():
  model = _MLP(nnx.Rngs(0))
  tx = optax.chain(optax.sgd(0.1), magnitude_pruning(0.75, begin_step=0, end_step=0,
                                                     update_every=1))
  x = jnp.ones((8, 16))
  before = {k: np.asarray(getattr(model, k).kernel[...]) for k in ("fc1", "fc2")}
  _, grads = nnx_optimizer_step(model, tx, x)
  for name in ("fc1", "fc2"):
    kernel = np.asarray(getattr(model, name).kernel[...])
    proposed = before[name] - 0.1 * np.asarray(getattr(grads, name).kernel[...])
    np.testing.assert_allclose(kernel, _numpy_prune(proposed, 0.75), rtol=1e-5, atol=1e-7)
  # Biases are not pruned: they moved by the plain SGD step only (from zero init).
  np.testing.assert_allclose(np.asarray(model.fc2.bias[...]),
                             -0.1 * np.asarray(grads.fc2.bias[...]), rtol=1e-6)


@pytest.mark.parametrize("distribution", ["erk", {"conv": 0.3, "dense": 0.9}])
def test_final_per_leaf_sparsity_follows_distribution(distribution):
  params = _params()
  tx = magnitude_pruning(0.7, begin_step=0, end_step=4, update_every=2,
                         distribution=distribution)
  state = tx.init(params)
  for t in range(6):
    u, state = tx.update(_grads(t), state, params)
    params = optax.apply_updates(params, u)
  want = masks_lib.leaf_sparsities(_params(), 0.7, distribution=distribution)
  if isinstance(distribution, dict):  # a mapping is taken as given
    assert {l: float(want[l]["kernel"]) for l in ("conv", "dense")} == pytest.approx(distribution)
  for layer in ("conv", "dense"):
    k = np.asarray(params[layer]["kernel"])
    assert (k == 0).sum() == math.floor(np.float32(want[layer]["kernel"]) * k.size)


def test_global_distribution_matches_one_threshold():
  params = _params()
  tx = magnitude_pruning(0.5, begin_step=0, end_step=0, update_every=1, distribution="global")
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, u)
  allk = np.concatenate([np.asarray(params[l]["kernel"]).ravel() for l in ("conv", "dense")])
  thr = np.sort(np.abs(allk))[math.floor(0.5 * allk.size) - 1]
  for l in ("conv", "dense"):
    k = np.asarray(params[l]["kernel"])
    np.testing.assert_array_equal(np.asarray(new[l]["kernel"]), np.where(np.abs(k) > thr, k, 0))
