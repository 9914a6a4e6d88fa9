"""Trained rank pruning: reshapes, truncation, nuclear subgradient, Optax contract, trainer."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import tree as tree_lib
from sparsejax.optim import find_states
from sparsejax.optim import trp
from sparsejax.optim.trp import (NuclearSubgradientState, TrainedRankPruningState,
                                 add_nuclear_subgradient, low_rank_params,
                                 trained_rank_pruning, trp_chain)
from fake_data import write_fake_cifar10
from optax_contract import (assert_trees_close, multisteps_and_reference,
                            nnx_optimizer_step, run_updates)

SCHEMES = ("channel", "spatial")


def _rng(seed=0):
  return np.random.default_rng(seed)


def _params(seed=0):
  """A stem conv (3 inputs: skipped), two 3x3 convs (selected), a 1x1 conv (skipped), a dense."""
  r = _rng(seed)
  n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
  return {
      "stem": {"kernel": n(3, 3, 3, 6)},
      "a": {"kernel": n(3, 3, 6, 8), "bias": n(8)},
      "b": {"kernel": n(3, 3, 8, 8)},
      "proj": {"kernel": n(1, 1, 8, 8)},
      "fc": {"kernel": n(32, 10), "bias": n(10)},
  }


def _grads(seed):
  return jax.tree.map(lambda p: jnp.asarray(_rng(seed + 100).normal(size=p.shape), p.dtype),
                      _params())


def _torch_matrix(kernel, scheme):
  """The authors' PyTorch reshapes, written on the OIHW weight."""
  w = np.transpose(np.asarray(kernel), (3, 2, 0, 1))  # HWIO -> OIHW (N, C, kh, kw)
  n, c, kh, kw = w.shape
  if scheme == "channel":
    return w.reshape(n, c * kh * kw)
  return w.transpose(1, 2, 0, 3).reshape(c * kh, n * kw)


def _energy_rank_np(s, e):
  s = np.asarray(s, np.float64)
  tot = np.sum(s ** 2)
  for r in range(1, len(s) + 1):
    if np.sum(s[:r] ** 2) >= e * tot:
      return r
  return len(s)


def _truncate_np(m, r):
  u, s, vt = np.linalg.svd(np.asarray(m, np.float64), full_matrices=False)
  return (u[:, :r] * s[:r]) @ vt[:r]


def _numerical_rank(m, rtol=1e-4):
  s = np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)
  return int(np.sum(s > rtol * s[0]))


def _with_spectrum(shape, sigma, scheme, seed=0):
  """A kernel of ``shape`` whose ``scheme`` matrix has singular values ``sigma``."""
  rows, cols = trp.matrix_shape(shape, scheme)
  r = _rng(seed)
  u, _ = np.linalg.qr(r.normal(size=(rows, len(sigma))))
  v, _ = np.linalg.qr(r.normal(size=(cols, len(sigma))))
  m = (u * np.asarray(sigma)) @ v.T
  return trp.from_matrix(jnp.asarray(m, jnp.float32), shape, scheme)


# ---------------------------------------------------------------------------
# The matrix views.


@pytest.mark.parametrize("scheme", SCHEMES)
def test_to_matrix_is_the_authors_reshape(scheme):
  k = _params()["a"]["kernel"]
  np.testing.assert_array_equal(np.asarray(trp.to_matrix(k, scheme)), _torch_matrix(k, scheme))
  back = trp.from_matrix(trp.to_matrix(k, scheme), k.shape, scheme)
  np.testing.assert_array_equal(np.asarray(back), np.asarray(k))


def test_channel_rows_are_output_filters_and_spatial_shape():
  k = _params()["a"]["kernel"]  # (3, 3, 6, 8)
  m = np.asarray(trp.to_matrix(k, "channel"))
  assert m.shape == (8, 54)
  np.testing.assert_array_equal(m[5], np.asarray(k[..., 5]).transpose(2, 0, 1).ravel())
  ms = np.asarray(trp.to_matrix(k, "spatial"))
  assert ms.shape == (6 * 3, 8 * 3)
  # entry ((c, h), (n, w)) is W[h, w, c, n]
  assert ms[2 * 3 + 1, 7 * 3 + 2] == np.asarray(k)[1, 2, 2, 7]
  fc = _params()["fc"]["kernel"]
  np.testing.assert_array_equal(np.asarray(trp.to_matrix(fc, "spatial")), np.asarray(fc).T)


def test_default_filter_selects_kxk_convs_except_input():
  selected = tree_lib.select(_params(), trp.default_filter)
  sel = dict(tree_lib.leaves_with_paths(selected))
  assert sel == {"stem/kernel": False, "a/kernel": True, "a/bias": False, "b/kernel": True,
                 "proj/kernel": False, "fc/kernel": False, "fc/bias": False}


# ---------------------------------------------------------------------------
# The truncation.


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("sigma,energy", [
    ([4.0, 2.0, 1.0, 0.5, 0.1], 0.9),     # 16/21.26 < .9 <= 20/21.26 -> r = 2
    ([4.0, 2.0, 1.0, 0.5, 0.1], 0.99),    # r = 4
    ([3.0, 2.5, 2.0, 1.5], 0.5),          # 9 < 10.75 <= 15.25 -> r = 2
    ([5.0, 1e-3, 1e-3], 0.9),             # r = 1
    ([1.6, 1.5, 1.4, 1.3, 1.2, 1.1], 1.0),  # everything
])
def test_truncation_keeps_the_energy_rank(scheme, sigma, energy):
  shape = (3, 3, 6, 8)
  kernel = _with_spectrum(shape, sigma, scheme)
  params = {"conv": {"kernel": kernel}}
  tx = trained_rank_pruning(energy, scheme=scheme)
  zero = jax.tree.map(jnp.zeros_like, params)
  u, state = tx.update(zero, tx.init(params), params)
  new = optax.apply_updates(params, u)["conv"]["kernel"]
  r = _energy_rank_np(sigma, energy)
  assert int(state.ranks["conv"]["kernel"]) == r
  m = np.asarray(trp.to_matrix(kernel, scheme), np.float64)
  want = _truncate_np(m, r)  # Eckart-Young: the best rank-r approximation
  np.testing.assert_allclose(np.asarray(trp.to_matrix(new, scheme)), want, atol=2e-5)
  assert _numerical_rank(trp.to_matrix(new, scheme)) == r


@pytest.mark.parametrize("scheme", SCHEMES)
def test_step_lands_on_rank_r_and_leaves_the_rest_alone(scheme):
  params = _params()
  sgd = optax.sgd(0.1, momentum=0.9)
  tx = trp_chain(sgd, energy=0.6, nuclear=1e-2, scheme=scheme)
  state = tx.init(params)
  ref_state = sgd.init(params)
  p, q = params, params
  for t in range(3):
    u, state = jax.jit(tx.update)(_grads(t), state, p)
    p = optax.apply_updates(p, u)
    v, ref_state = sgd.update(_grads(t), ref_state, q)
    q = optax.apply_updates(q, v)
  ranks = find_states(state, TrainedRankPruningState)[0].ranks
  for name in ("a", "b"):
    r = int(ranks[name]["kernel"])
    m = trp.to_matrix(p[name]["kernel"], scheme)
    assert 1 <= r < min(m.shape)
    assert _numerical_rank(m) == r  # the truncation's rank, not a smaller one
  # Unselected leaves saw the plain optimizer only.
  for path in (("stem", "kernel"), ("a", "bias"), ("proj", "kernel"), ("fc", "kernel")):
    np.testing.assert_allclose(p[path[0]][path[1]], q[path[0]][path[1]], rtol=1e-5, atol=1e-6)
  assert ranks["stem"]["kernel"] is None and ranks["fc"]["bias"] is None


def test_include_dense_truncates_the_dense_kernel():
  params = _params()
  tx = trained_rank_pruning(0.5, include_dense=True)
  u, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, u)
  s = np.linalg.svd(np.asarray(params["fc"]["kernel"], np.float64), compute_uv=False)
  r = _energy_rank_np(s, 0.5)
  assert int(state.ranks["fc"]["kernel"]) == r
  np.testing.assert_allclose(new["fc"]["kernel"], _truncate_np(params["fc"]["kernel"], r),
                             atol=2e-5)
  np.testing.assert_array_equal(new["fc"]["bias"], params["fc"]["bias"])


def test_period_schedules_truncation_and_subgradient():
  """Truncation on (t + 1) % P == 0, subgradient on t % P == 0."""
  params = _params()
  period = 3
  trunc = trained_rank_pruning(0.5, period=period)
  nuc = add_nuclear_subgradient(1.0, period=period)
  ts, ns = trunc.init(params), nuc.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  p = params
  for t in range(7):
    g, ns = jax.jit(nuc.update)(zero, ns, p)
    assert bool(jnp.any(g["a"]["kernel"] != 0)) == (t % period == 0), t
    u, ts = jax.jit(trunc.update)(_grads(t), ts, p)
    p = optax.apply_updates(p, u)
    m = trp.to_matrix(p["a"]["kernel"])
    landed = (t + 1) % period == 0
    assert (_numerical_rank(m) < min(m.shape)) == landed, t
  assert int(ts.count) == 7 and int(ns.count) == 7


def test_matches_the_papers_iteration():
  """Truncate-before-forward + nuclear term through SGD momentum and weight decay, as the paper.

  Paper, each iteration: W~ = T(W); g = grad L(W~) + lam U_r V_r^T (from W) + wd W~;
  m = mu m + g; W = W~ - lr m. Ours: p_0 = T(W_0), then the chain; p_k must equal T(W_k).
  """
  r = _rng(3)
  target = jnp.asarray(r.normal(size=(3, 3, 6, 8)), jnp.float32)
  a_mat = jnp.asarray(r.normal(size=(8, 8)), jnp.float32) / 3

  def loss(w):  # a smooth non-quadratic loss of the kernel
    return jnp.sum(jnp.tanh(w @ a_mat) * target) + 0.5 * jnp.sum(w ** 2)

  lr, mu, wd, lam, e = 0.05, 0.9, 1e-2, 0.05, 0.8
  w0 = jnp.asarray(r.normal(size=(3, 3, 6, 8)), jnp.float32)

  def paper_trunc(w):
    m = np.asarray(trp.to_matrix(w), np.float64)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    k = _energy_rank_np(s, e)
    return (trp.from_matrix(jnp.asarray((u[:, :k] * s[:k]) @ vt[:k], jnp.float32), w.shape),
            trp.from_matrix(jnp.asarray(u[:, :k] @ vt[:k], jnp.float32), w.shape))

  w, mom = w0, jnp.zeros_like(w0)
  paper = []
  for _ in range(5):
    wt, nuc_dir = paper_trunc(w)
    g = jax.grad(loss)(wt) + lam * nuc_dir + wd * wt
    mom = mu * mom + g
    w = wt - lr * mom
    paper.append(paper_trunc(w)[0])

  tx = trp_chain(optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu)),
                 energy=e, nuclear=lam)
  p = low_rank_params({"w": {"kernel": w0}}, energy=e)[0]
  state = tx.init(p)
  for k in range(5):
    u, state = tx.update({"w": {"kernel": jax.grad(loss)(p["w"]["kernel"])}}, state, p)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p["w"]["kernel"], paper[k], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# The nuclear subgradient.


def _nuclear_norm_np(m):
  return float(np.sum(np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_nuclear_subgradient_matches_finite_differences(scheme):
  # Full rank with well-separated singular values: the nuclear norm is differentiable here.
  shape = (3, 3, 6, 8)
  rows, cols = trp.matrix_shape(shape, scheme)
  sigma = np.linspace(3.0, 1.0, min(rows, cols))
  kernel = _with_spectrum(shape, sigma, scheme, seed=4)
  lam = 0.3
  params = {"conv": {"kernel": kernel}}
  tx = add_nuclear_subgradient(lam, scheme=scheme)
  g, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  grad = np.asarray(g["conv"]["kernel"], np.float64) / lam
  w = np.asarray(kernel, np.float64)
  eps = 1e-5
  r = _rng(5)
  for _ in range(3):
    d = r.normal(size=shape)
    plus = _nuclear_norm_np(_torch_matrix(w + eps * d, scheme))
    minus = _nuclear_norm_np(_torch_matrix(w - eps * d, scheme))
    fd = (plus - minus) / (2 * eps)
    assert np.sum(grad * d) == pytest.approx(fd, rel=1e-4, abs=1e-4)


def test_nuclear_subgradient_on_a_dense_kernel_and_at_low_rank():
  r = _rng(6)
  u, _ = np.linalg.qr(r.normal(size=(12, 4)))
  v, _ = np.linalg.qr(r.normal(size=(7, 4)))
  w = (u * [5.0, 2.0, 0.5, 0.0]) @ v.T  # rank 3
  params = {"fc": {"kernel": jnp.asarray(w, jnp.float32)}}
  tx = add_nuclear_subgradient(0.5, include_dense=True)
  g0 = {"fc": {"kernel": jnp.ones((12, 7), jnp.float32)}}
  g, _ = tx.update(g0, tx.init(params), params)
  want = 1.0 + 0.5 * (u[:, :3] @ v[:, :3].T)  # minimal-norm subgradient: U_r V_r^T
  np.testing.assert_allclose(np.asarray(g["fc"]["kernel"]), want, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_nuclear_subgradient_keeps_the_truncated_rank_in_low_precision(dtype):
  # A rank-r kernel stored in bf16/f16 whose kept singular values are 6% of the
  # largest: the direction must be U_r V_r^T of all r, not just the top one
  # (sqrt(eps) of bf16, 0.088, dropped all but one).
  r = _rng(11)
  u, _ = np.linalg.qr(r.normal(size=(40, 12)))
  v, _ = np.linalg.qr(r.normal(size=(9 * 16, 12)))
  s = np.r_[1.0, [0.06] * 5, [0.0] * 6]  # rank 6
  kernel = trp.from_matrix(jnp.asarray((u * s) @ v.T, jnp.float32), (3, 3, 16, 40)).astype(dtype)
  params = {"conv": {"kernel": kernel}}
  tx = add_nuclear_subgradient(1.0)
  g, _ = tx.update({"conv": {"kernel": jnp.zeros_like(kernel)}}, tx.init(params), params)
  got = np.asarray(trp.to_matrix(g["conv"]["kernel"].astype(jnp.float32)), np.float64)
  mat = np.asarray(trp.to_matrix(kernel.astype(jnp.float32)), np.float64)
  uu, ss, vt = np.linalg.svd(mat, full_matrices=False)
  assert ss[5] / ss[0] > 0.05 and ss[6] / ss[0] < 0.01  # rank 6 after rounding, tail is noise
  want = uu[:, :6] @ vt[:6]
  tol = 2 * float(jnp.finfo(dtype).eps) * np.linalg.norm(want)
  assert np.linalg.norm(got - want) < max(tol, 0.05), np.linalg.norm(got - want)


def test_nuclear_zero_strength_and_zero_kernel():
  params = {"conv": {"kernel": jnp.zeros((3, 3, 6, 8))}}
  g = {"conv": {"kernel": jnp.full((3, 3, 6, 8), 2.0)}}
  tx = add_nuclear_subgradient(1.0)
  out, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_array_equal(out["conv"]["kernel"], g["conv"]["kernel"])


# ---------------------------------------------------------------------------
# Optax contract.


def test_jit_matches_eager():
  params = _params()
  tx = trp_chain(optax.adam(1e-2), energy=0.7, nuclear=1e-3, period=2, include_dense=True)
  grads = [_grads(t) for t in range(4)]
  p1, _ = run_updates(tx, params, grads)
  p2, _ = run_updates(tx, params, grads, jit=True)
  assert_trees_close(p1, p2, rtol=1e-4, atol=1e-5)


def test_inject_hyperparams():
  params, g = _params(), _grads(3)
  direct = trp_chain(optax.sgd(0.1), energy=0.7, nuclear=0.01, scheme="spatial")
  injected = optax.chain(
      optax.inject_hyperparams(add_nuclear_subgradient, static_args=("filter_fn",))(
          strength=0.01, scheme="spatial"),
      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
      optax.inject_hyperparams(trained_rank_pruning, static_args=("filter_fn",))(
          energy=0.7, scheme="spatial"))
  u1, _ = direct.update(g, direct.init(params), params)
  state = injected.init(params)
  u2, state = jax.jit(injected.update)(g, state, params)
  assert_trees_close(u1, u2, rtol=1e-5, atol=1e-6)
  assert len(find_states(state, TrainedRankPruningState)) == 1
  assert len(find_states(state, NuclearSubgradientState)) == 1
  # A new energy takes effect without rebuilding.
  state[2].hyperparams["energy"] = jnp.asarray(0.3)
  u3, state = jax.jit(injected.update)(g, state, params)
  assert int(find_states(state, TrainedRankPruningState)[0].ranks["a"]["kernel"]) < int(
      find_states(direct.init(params), TrainedRankPruningState)[0].ranks["a"]["kernel"])


def test_multisteps_counts_optimizer_steps():
  params = _params()
  inner = trp_chain(optax.sgd(0.1), energy=0.7, nuclear=0.01, period=2)
  grads = [_grads(t) for t in range(8)]
  p, state, q = multisteps_and_reference(inner, params, grads, jit=True)
  # MultiSteps averages with a running mean: float rounding differs slightly.
  assert_trees_close(p, q, rtol=1e-3, atol=1e-4)
  assert int(find_states(state, TrainedRankPruningState)[0].count) == 4


class _ConvNet(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
    self.fc = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
    return self.fc(jnp.mean(x, axis=(1, 2)))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_nnx_optimizer(scheme):
  model = _ConvNet(nnx.Rngs(0))
  before = np.asarray(model.conv1.kernel[...])
  tx = trp_chain(optax.sgd(0.1), energy=0.5, nuclear=1e-3, scheme=scheme)
  x = jnp.asarray(_rng(7).normal(size=(4, 6, 6, 3)), jnp.float32)
  opt, grads = nnx_optimizer_step(model, tx, x)
  ranks = find_states(opt.opt_state, TrainedRankPruningState)[0].ranks
  r = int(ranks["conv2"]["kernel"].get_value())  # nnx.Optimizer wraps state leaves
  m = trp.to_matrix(model.conv2.kernel[...], scheme)
  assert 1 <= r < min(m.shape) and _numerical_rank(m) <= r
  # The input conv (3 channels) is not selected: plain SGD.
  np.testing.assert_allclose(np.asarray(model.conv1.kernel[...]),
                             before - 0.1 * np.asarray(grads.conv1.kernel[...]), rtol=1e-5,
                             atol=1e-6)


# ---------------------------------------------------------------------------
# The pure truncation, the builder, bad arguments.


@pytest.mark.parametrize("scheme", SCHEMES)
def test_low_rank_params_energy_and_cut(scheme):
  params = _params()
  lowp, ranks = jax.jit(lambda p: low_rank_params(p, energy=0.6, scheme=scheme))(params)
  for name in ("a", "b"):
    m = np.asarray(trp.to_matrix(params[name]["kernel"], scheme), np.float64)
    s = np.linalg.svd(m, compute_uv=False)
    r = _energy_rank_np(s, 0.6)
    assert int(ranks[name]["kernel"]) == r
    # float32 SVD: the kept subspace moves by ~eps * |W| / gap (6.5e-5 seen with |W| ~ 12);
    # a wrong rank is off by a whole singular value.
    tol = 1e-5 * float(s[0])
    np.testing.assert_allclose(trp.to_matrix(lowp[name]["kernel"], scheme), _truncate_np(m, r),
                               atol=tol)
    cut = float(s[3]) - 1e-4  # keeps exactly 4 values
    cp, cr = low_rank_params(params, cut=cut, scheme=scheme)
    assert int(cr[name]["kernel"]) == 4
    np.testing.assert_allclose(trp.to_matrix(cp[name]["kernel"], scheme), _truncate_np(m, 4),
                               atol=tol)
  np.testing.assert_array_equal(lowp["stem"]["kernel"], params["stem"]["kernel"])
  assert ranks["fc"]["kernel"] is None


def _cfg(**kw):
  base = dict(name="trained_rank_pruning", energy=0.6, nuclear=3e-4, period=1, scheme="channel",
              include_dense=False, filter_regex="", truncate_init=True, cut=0.05)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_builder_pieces_and_report():
  alg = trp.trained_rank_pruning_from_config(_cfg(), {"steps_per_epoch": 10, "total_steps": 10})
  assert len(alg.before) == 1 and len(alg.after) == 1
  params = _params()
  init = alg.prepare_params(params)
  want, _ = low_rank_params(params, energy=0.6)
  jax.tree.map(np.testing.assert_array_equal, init, want)
  tx = optax.chain(*alg.before, optax.sgd(0.05), *alg.after)
  state = tx.init(init)
  u, state = tx.update(_grads(0), state, init)
  p = optax.apply_updates(init, u)
  cut_p = alg.eval_params(p, state)
  rep = alg.report(p, state)["trp"]
  assert set(rep["layers"]) == {"a/kernel", "b/kernel"}
  for path, name in (("a/kernel", "a"), ("b/kernel", "b")):
    layer = rep["layers"][path]
    m = np.asarray(trp.to_matrix(p[name]["kernel"]), np.float64)
    s = np.linalg.svd(m, compute_uv=False)
    assert layer["cut_rank"] == int(np.sum(s >= 0.05))
    assert layer["train_rank"] == int(find_states(state, TrainedRankPruningState)[0]
                                      .ranks[name]["kernel"])
    assert layer["factored_params"] == min(m.size, layer["cut_rank"] * sum(m.shape))
    assert _numerical_rank(trp.to_matrix(cut_p[name]["kernel"])) == layer["cut_rank"]
  assert rep["params"] == 3 * 3 * 6 * 8 + 3 * 3 * 8 * 8


def test_builder_without_nuclear_and_with_regex():
  alg = trp.trained_rank_pruning_from_config(_cfg(nuclear=0.0, filter_regex="^b/",
                                                  truncate_init=False), {})
  assert alg.before == () and alg.prepare_params is None
  params = _params()
  tx = optax.chain(optax.sgd(0.0), *alg.after)
  u, _ = tx.update(_grads(0), tx.init(params), params)
  p = optax.apply_updates(params, u)
  np.testing.assert_array_equal(p["a"]["kernel"], params["a"]["kernel"])
  # lr 0: b is its own best approximation at the rank keeping 60% of the energy.
  m = np.asarray(trp.to_matrix(params["b"]["kernel"]), np.float64)
  r = _energy_rank_np(np.linalg.svd(m, compute_uv=False), 0.6)
  assert r < min(m.shape)
  np.testing.assert_allclose(np.asarray(trp.to_matrix(p["b"]["kernel"])), _truncate_np(m, r),
                             atol=2e-5)
  with pytest.raises(ValueError, match="config.algorithm.scheme"):
    trp.trained_rank_pruning_from_config(_cfg(scheme="rows"), {})
  with pytest.raises(ValueError, match="config.algorithm.energy"):
    trp.trained_rank_pruning_from_config(_cfg(energy=0.0), {})


@pytest.mark.parametrize("fn,kwargs,err,match", [
    (trained_rank_pruning, dict(energy=0.0), ValueError, "energy must be in"),
    (trained_rank_pruning, dict(energy=1.5), ValueError, "energy must be in"),
    (trained_rank_pruning, dict(energy=float("nan")), ValueError, "energy"),
    (trained_rank_pruning, dict(period=0), ValueError, "period must be an int >= 1"),
    (trained_rank_pruning, dict(period=1.5), ValueError, "period"),
    (trained_rank_pruning, dict(period=True), TypeError, "period"),
    (trained_rank_pruning, dict(scheme="rows"), ValueError, "scheme must be one of"),
    (trained_rank_pruning, dict(filter_fn="conv"), TypeError, "filter_fn"),
    (trained_rank_pruning, dict(include_dense="yes"), TypeError, "include_dense"),
    (add_nuclear_subgradient, dict(strength=-1.0), ValueError, "strength"),
    (add_nuclear_subgradient, dict(rtol=2.0), ValueError, "rtol"),
    (add_nuclear_subgradient, dict(scheme="spatialwise"), ValueError, "scheme"),
])
def test_bad_arguments(fn, kwargs, err, match):
  with pytest.raises(err, match=match):
    fn(**kwargs)


def test_bad_use():
  params = _params()
  for tx in (trained_rank_pruning(), add_nuclear_subgradient()):
    with pytest.raises(ValueError, match="needs params"):
      tx.update(params, tx.init(params))
  conv1d = {"c": {"kernel": jnp.ones((3, 8, 8))}}
  with pytest.raises(ValueError, match="spatial scheme needs a 2-D conv"):
    trained_rank_pruning(scheme="spatial").init(conv1d)
  with pytest.raises(ValueError, match="ndim >= 2"):
    trained_rank_pruning(filter_fn=lambda p, x: True).init(params)
  with pytest.raises(ValueError, match="exactly one of energy and cut"):
    low_rank_params(params)
  with pytest.raises(ValueError, match="exactly one of energy and cut"):
    low_rank_params(params, energy=0.5, cut=0.1)
  with pytest.raises(TypeError, match="optax.GradientTransformation"):
    trp_chain("sgd")
  with pytest.raises(ValueError, match="matrix must have shape"):
    trp.from_matrix(jnp.ones((3, 3)), (3, 3, 6, 8))


def test_channel_scheme_on_1d_conv_works():
  k = jnp.asarray(_rng(8).normal(size=(5, 8, 6)), jnp.float32)
  params = {"c": {"kernel": k}}
  tx = trained_rank_pruning(0.5)
  u, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, u)["c"]["kernel"]
  m = np.asarray(k).transpose(2, 1, 0).reshape(6, 40)
  r = _energy_rank_np(np.linalg.svd(m, compute_uv=False), 0.5)
  assert int(state.ranks["c"]["kernel"]) == r
  np.testing.assert_allclose(np.asarray(new).transpose(2, 1, 0).reshape(6, 40),
                             _truncate_np(m, r), atol=2e-5)
  assert math.isclose(float(jnp.sum(new ** 2)) / float(jnp.sum(k ** 2)),
                      float(np.sum(_truncate_np(m, r) ** 2) / np.sum(m ** 2)), rel_tol=1e-4)


# ---------------------------------------------------------------------------
# The trainer.


def test_smoke_config_trains_low_rank(tmp_path):
  from configs import resnet_cifar10_trp  # pylint: disable=import-outside-toplevel
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  assert train.ALGORITHMS["trained_rank_pruning"] is trp.trained_rank_pruning_from_config
  write_fake_cifar10(str(tmp_path), n_train=128, n_test=32, seed=9)
  c = resnet_cifar10_trp.get_config("spatial,smoke")
  c.data.dir = str(tmp_path)
  c.data.train_subset = None
  c.data.test_subset = None
  c.algorithm.cut = 1.0  # cuts some trained ranks, so the cut model differs from W
  report = train.train_and_evaluate(c, str(tmp_path / "run"))
  layers = report["trp"]["layers"]
  assert len(layers) == 18  # 9 blocks x 2 convs; the stem (3 input channels) is not selected
  assert "stem/conv/kernel" not in layers
  for path, l in layers.items():
    # The last step landed on rank train_rank; the cut can only lower it.
    assert l["cut_rank"] <= l["train_rank"] < l["full_rank"], path
  assert report["trp"]["scheme"] == "spatial"
  # sparse_test_* evaluate the kernels cut at sigma >= 1.0: rebuilt here in numpy from
  # the final checkpoint and evaluated independently.
  from sparsejax import pipelines  # pylint: disable=import-outside-toplevel
  state = pipelines.load_final_state(c, str(tmp_path / "run"))

  def cut(path, leaf):
    if path not in layers:
      return leaf
    u, sv, vt = np.linalg.svd(np.asarray(trp.to_matrix(leaf, "spatial"), np.float64),
                              full_matrices=False)
    keep = sv >= 1.0
    assert int(keep.sum()) == layers[path]["cut_rank"], path
    return trp.from_matrix(((u[:, keep] * sv[keep]) @ vt[keep]).astype(np.float32),
                           leaf.shape, "spatial")

  params = jax.tree_util.tree_map_with_path(lambda k, x: cut(tree_lib.path_str(k), x),
                                            state.params)
  got = pipelines.evaluate_state(c, state._replace(params=params))
  assert report["sparse_test_accuracy"] == pytest.approx(got["accuracy"])
  assert report["sparse_test_loss"] == pytest.approx(got["loss"], rel=1e-4)
  assert any(l["cut_rank"] < l["train_rank"] for l in layers.values())
  assert report["sparse_test_loss"] != pytest.approx(report["test_loss"], rel=1e-3)  # not W's


@pytest.mark.parametrize("scheme", SCHEMES)
def test_trained_rank_pruning_with_optimizer_is_the_whole_method(scheme):
  """``trained_rank_pruning(optimizer=...)``: the paper's defaults, nuclear term included.

  A zero loss gradient on a kernel whose matrix has singular values (3, 2, 0, ...)
  (energy 9/13 < 0.9, so the truncation keeps rank 2): plain SGD with lr 0.1 moves
  by -0.1 * 3e-4 * U_2 V_2^T, so both kept singular values shrink by exactly 3e-5,
  the singular vectors stay and the rank stays 2.
  """
  shape = (3, 3, 4, 6)
  kernel = _with_spectrum(shape, [3.0, 2.0], scheme)
  params = {"stem": {"kernel": jnp.zeros((3, 3, 3, 4))}, "conv": {"kernel": kernel}}
  zero = jax.tree.map(jnp.zeros_like, params)
  tx = trp.trained_rank_pruning(optimizer=optax.sgd(0.1), scheme=scheme)
  updates, _ = jax.jit(tx.update)(zero, tx.init(params), params)
  new = optax.apply_updates(params, updates)["conv"]["kernel"]
  m, m0 = np.asarray(trp.to_matrix(new, scheme), np.float64), trp.to_matrix(kernel, scheme)
  s = np.linalg.svd(m, compute_uv=False)
  np.testing.assert_allclose(s[:2], [3.0 - 3e-5, 2.0 - 3e-5], rtol=0, atol=2e-6)
  assert _numerical_rank(m) == 2
  u, _, vt = np.linalg.svd(np.asarray(m0, np.float64), full_matrices=False)
  want = np.asarray(m0, np.float64) - 3e-5 * (u[:, :2] @ vt[:2])
  np.testing.assert_allclose(m, want, atol=2e-6)
  # The same chain as trp_chain, state included; nuclear=0 drops the term.
  ref = trp.trp_chain(optax.sgd(0.1), scheme=scheme)
  ref_u, _ = jax.jit(ref.update)(zero, ref.init(params), params)
  assert_trees_close(updates, ref_u, atol=0.0)
  tx0 = trp.trained_rank_pruning(optimizer=optax.sgd(0.1), nuclear=0.0, scheme=scheme)
  u0, _ = tx0.update(zero, tx0.init(params), params)
  np.testing.assert_allclose(np.asarray(optax.apply_updates(params, u0)["conv"]["kernel"]),
                             np.asarray(kernel), atol=1e-6)


def test_trained_rank_pruning_refuses_nuclear_without_an_optimizer():
  with pytest.raises(ValueError, match=r"nuclear=0.001 needs optimizer=\.\.\."):
    trp.trained_rank_pruning(0.9, nuclear=1e-3)


def test_nuclear_zero_can_be_injected():
  """optax.inject_hyperparams passes nuclear as an array at init and a tracer at update;
  the chain must not lose its subgradient transform in one and keep it in the other."""
  params = _params()
  tx = optax.inject_hyperparams(trp.trained_rank_pruning)(
      optimizer=optax.sgd(0.1), nuclear=0.0, energy=0.9)
  updates, _ = jax.jit(tx.update)(_grads(1), tx.init(params), params)
  ref = trp.trp_chain(optax.sgd(0.1), nuclear=0.0)
  want, _ = ref.update(_grads(1), ref.init(params), params)
  assert_trees_close(updates, want, rtol=1e-5, atol=1e-6)
