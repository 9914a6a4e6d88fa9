"""The generic proximal-gradient step: closed-form lasso solutions and the Optax contract."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import prox
from sparsejax.optim import find_states
from sparsejax.optim.proximal_gradient import ProximalState, proximal, proximal_from_config
from optax_contract import (assert_trees_close, multisteps_and_reference,
                            nnx_optimizer_step, run_updates)


def _orthonormal(n, d, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, d)))
  return q  # (n, d), q.T @ q = I


def _soft(x, t):
  return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)


def _run(tx, params, grad_fn, steps):
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    u, s = tx.update(grad_fn(p), s, p)
    return optax.apply_updates(p, u), s

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


# ---------------------------------------------------------------------------
# closed-form solutions


def test_lasso_orthogonal_design_converges_to_soft_threshold():
  """min_w 1/2 ||Xw - y||^2 + lam ||w||_1 with X^T X = I: w* = S_lam(X^T y)."""
  x = _orthonormal(40, 12, 0)
  y = np.random.default_rng(1).normal(size=40)
  z = x.T @ y
  lam = float(np.median(np.abs(z)))  # about half of w* is exactly zero
  want = _soft(z, lam)
  assert 3 <= np.sum(want == 0) <= 9
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  grad_fn = jax.grad(lambda p: 0.5 * jnp.sum((xj @ p["w"] - yj) ** 2))
  lr = optax.piecewise_constant_schedule(0.5, {10: 1.6})  # eta in (0, 2/L), L = 1
  tx = optax.chain(optax.sgd(lr), proximal(prox.l1, lam, lr, filter_fn=lambda p, l: True))
  params, state = _run(tx, {"w": jnp.zeros(12, jnp.float32)}, grad_fn, 60)
  np.testing.assert_allclose(np.asarray(params["w"]), want, atol=1e-6)
  assert np.all((np.asarray(params["w"]) == 0) == (want == 0))  # exact zeros, same support
  assert int(find_states(state, ProximalState)[0].count) == 60


def test_first_steps_use_the_learning_rate_of_that_step():
  """w_{t+1} = S_{eta_t lam}(w_t - eta_t grad f(w_t)) with eta_t = 0.1 (t + 1)."""
  x = _orthonormal(10, 6, 2)
  y = np.random.default_rng(3).normal(size=10)
  lam, lr = 0.7, (lambda t: 0.1 * (t + 1))
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  grad_fn = jax.grad(lambda p: 0.5 * jnp.sum((xj @ p["w"] - yj) ** 2))
  w0 = np.random.default_rng(4).normal(size=6)
  tx = optax.chain(optax.sgd(lr), proximal(prox.l1, lam, lr, filter_fn=lambda p, l: True))
  params = {"w": jnp.asarray(w0, jnp.float32)}
  state = tx.init(params)
  w = w0
  for t in range(3):
    u, state = tx.update(grad_fn(params), state, params)
    params = optax.apply_updates(params, u)
    eta = 0.1 * (t + 1)
    w = _soft(w - eta * (x.T @ (x @ w - y)), eta * lam)
    np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=1e-5, atol=1e-6)


def test_group_lasso_orthogonal_design_with_partial_axis():
  """min_W 1/2 ||XW - Y||^2 + lam sum_rows ||W_i||: W*_i = max(1 - lam/||Z_i||, 0) Z_i."""
  x = _orthonormal(30, 10, 5)
  y = np.random.default_rng(6).normal(size=(30, 4))
  z = x.T @ y
  norms = np.linalg.norm(z, axis=1)
  lam = float(np.median(norms))
  want = np.maximum(1 - lam / norms, 0)[:, None] * z
  assert 3 <= np.sum(np.all(want == 0, axis=1)) <= 7
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  grad_fn = jax.grad(lambda p: 0.5 * jnp.sum((xj @ p["fc"]["kernel"] - yj) ** 2))
  group_rows = functools.partial(prox.group_l2, axis=0)  # one group per row of (in, out)
  tx = optax.chain(optax.sgd(0.7), proximal(group_rows, lam, 0.7))  # default filter: kernels
  params, _ = _run(tx, {"fc": {"kernel": jnp.zeros((10, 4), jnp.float32)}}, grad_fn, 50)
  got = np.asarray(params["fc"]["kernel"])
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_array_equal(np.all(got == 0, axis=1), np.all(want == 0, axis=1))


def test_tl1_through_partial_matches_one_prox_step():
  params = {"fc": {"kernel": jnp.asarray(np.random.default_rng(7).normal(size=(5, 3)),
                                         jnp.float32),
                   "bias": jnp.ones(3, jnp.float32)}}
  g = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
  tl1 = functools.partial(prox.tl1, a=0.5)
  tx = optax.chain(optax.sgd(0.2), proximal(tl1, 1.5, 0.2))
  u, _ = tx.update(g, tx.init(params), params)
  new = optax.apply_updates(params, u)
  want = prox.tl1(params["fc"]["kernel"] - 0.06, 0.3, 0.5)
  np.testing.assert_allclose(np.asarray(new["fc"]["kernel"]), np.asarray(want), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new["fc"]["bias"]), 1 - 0.06, rtol=1e-6)  # not selected


# ---------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(prox_fn="l1"), TypeError, "prox_fn"),
    (dict(strength=-0.1), ValueError, "strength"),
    (dict(strength=float("nan")), ValueError, "strength"),
    (dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (dict(learning_rate="0.1"), TypeError, "learning_rate"),
    (dict(filter_fn=3), TypeError, "filter_fn"),
])
def test_bad_arguments(kwargs, err, match):
  args = dict(prox_fn=prox.l1, strength=0.1, learning_rate=0.1)
  args.update(kwargs)
  with pytest.raises(err, match=match):
    proximal(**args)


def test_update_needs_params():
  tx = proximal(prox.l1, 0.1, 0.1)
  params = {"fc": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))


# ---------------------------------------------------------------------------
# Optax contract


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
          "dense": {"kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}}


def _grads(seed):
  rng = np.random.default_rng(100 + seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), _params())


def test_jit_matches_eager_with_adam():
  sched = optax.exponential_decay(0.05, 1, 0.8)
  tx = optax.chain(optax.adam(sched), proximal(prox.group_l2, 0.5, sched))
  grads = [_grads(t) for t in range(4)]
  p1, _ = run_updates(tx, _params(), grads)
  p2, _ = run_updates(tx, _params(), grads, jit=True)
  assert_trees_close(p1, p2)
  # What the chain computes: the group prox of the Adam point, at this step's lr.
  adam = optax.adam(sched)
  q, sa = _params(), adam.init(_params())
  for t in range(4):
    u, sa = adam.update(_grads(t), sa, q)
    q = optax.apply_updates(q, u)
    q = {k: dict(v, kernel=prox.group_l2(v["kernel"], 0.5 * sched(t))) for k, v in q.items()}
  assert_trees_close(p1, q, rtol=1e-5, atol=1e-6)


def test_inject_hyperparams():
  params = _params()
  sched = lambda t: 0.1 / (1.0 + t)
  direct = optax.chain(optax.sgd(sched), proximal(prox.l1, 0.4, sched))
  injected = optax.chain(
      optax.inject_hyperparams(optax.sgd)(learning_rate=sched),
      optax.inject_hyperparams(proximal, static_args=("prox_fn", "filter_fn"))(
          prox_fn=prox.l1, strength=0.4, learning_rate=sched))
  grads = [_grads(t) for t in range(3)]
  p1, _ = run_updates(direct, params, grads)
  p2, s2 = run_updates(injected, params, grads, jit=True)
  assert_trees_close(p1, p2)
  assert len(find_states(s2, ProximalState)) == 1


def test_multisteps_counts_optimizer_steps():
  sched = lambda t: 0.2 / (1.0 + t)
  inner = optax.chain(optax.sgd(sched), proximal(prox.l0, 0.5, sched))
  grads = [_grads(t) for t in range(4)]
  p, state, q = multisteps_and_reference(inner, _params(), grads)
  assert_trees_close(p, q)
  assert int(find_states(state, ProximalState)[0].count) == 2


class _MLP(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(6, 16, rngs=rngs)
    self.fc2 = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.relu(self.fc1(x)))


def test_nnx_optimizer():
  model = _MLP(nnx.Rngs(0))
  tx = optax.chain(optax.sgd(0.1), proximal(prox.l1, 0.5, 0.1))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 6)), jnp.float32)
  before = {k: np.asarray(getattr(model, k).kernel[...]) for k in ("fc1", "fc2")}
  opt, grads = nnx_optimizer_step(model, tx, x)
  for name in ("fc1", "fc2"):
    want = _soft(before[name] - 0.1 * np.asarray(getattr(grads, name).kernel[...]), 0.05)
    np.testing.assert_allclose(np.asarray(getattr(model, name).kernel[...]), want,
                               rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(model.fc2.bias[...]),
                             -0.1 * np.asarray(grads.fc2.bias[...]), rtol=1e-6)
  assert int(find_states(opt.opt_state, ProximalState)[0].count[...]) == 1


# ---------------------------------------------------------------------------
# trainer builder


def test_from_config_builds_an_after_transform_on_the_lr_schedule():
  sched = optax.piecewise_constant_schedule(0.1, {1: 0.5})
  cfg = ml_collections.ConfigDict(dict(name="proximal", prox="tl1", strength=2.0, a=0.5))
  alg = proximal_from_config(cfg, dict(steps_per_epoch=10, total_steps=100, lr_schedule=sched))
  assert alg.before == () and len(alg.after) == 1
  tx = optax.chain(optax.sgd(sched), *alg.after)
  ref = optax.chain(optax.sgd(sched), proximal(functools.partial(prox.tl1, a=0.5), 2.0, sched))
  p1 = p2 = _params()
  s1, s2 = tx.init(p1), ref.init(p2)
  for t in range(2):
    u1, s1 = tx.update(_grads(t), s1, p1)
    p1 = optax.apply_updates(p1, u1)
    u2, s2 = ref.update(_grads(t), s2, p2)
    p2 = optax.apply_updates(p2, u2)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), p1, p2)
  rep = alg.report(p1, s1)["proximal"]
  kernels = [np.asarray(p1[k]["kernel"]) for k in ("conv", "dense")]
  assert rep["sparsity"] == pytest.approx(
      sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))
  assert rep["channels"] == 4 + 3


def test_from_config_rejects_unknown_prox():
  cfg = ml_collections.ConfigDict(dict(name="proximal", prox="scad", strength=1.0))
  with pytest.raises(ValueError, match="prox"):
    proximal_from_config(cfg, dict(steps_per_epoch=1, total_steps=1, lr_schedule=lambda t: 0.1))


def test_float16_params_keep_a_tiny_threshold():
  # eta * strength = 1e-8 is 0 in float16; the hard threshold sqrt(2e-8) ~ 1.4e-4 must act.
  params = {"d": {"kernel": jnp.array([[1e-4, 5e-5], [2e-3, -3e-5]], jnp.float16)}}
  tx = optax.chain(optax.sgd(1e-3), proximal(prox.l0, 1e-5, 1e-3))
  zeros = jax.tree.map(jnp.zeros_like, params)
  u, _ = tx.update(zeros, tx.init(params), params)
  out = optax.apply_updates(params, u)["d"]["kernel"]
  assert out.dtype == jnp.float16
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(jnp.array([[0, 0], [2e-3, 0]], jnp.float16), np.float32))


def test_filter_selecting_nothing_is_an_error():
  """A filter that matches no leaf would leave every update untouched (a dense run)."""
  params = {"lin": {"weights": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=r"proximal: filter_fn selected no parameter.*lin/weights"):
    proximal(prox.l1, 100.0, 1.0).init(params)
