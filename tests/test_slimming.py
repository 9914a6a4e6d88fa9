"""Network slimming: proximal transform, penalties, channel mask, the three-stage pipeline."""

import doctest
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import resnet_cifar10_slimming, vgg_cifar10_slimming
from sparsejax import models
from sparsejax import pipelines
from sparsejax import train
from sparsejax import tree as tree_lib
from sparsejax.optim import find_states
from sparsejax.optim import slimming
from sparsejax.optim.slimming import (ChannelMaskState, NetworkSlimmingState,
                                      SlimmingPenaltyState, channel_mask, network_slimming,
                                      apply_sparse_scales, removable_channels, set_bn_scales,
                                      slimming_penalty)
from fake_data import write_fake_cifar10
from optax_contract import assert_trees_close, multisteps_and_reference, run_updates

_REGISTRY = {
    "network_slimming": slimming.network_slimming_from_config,
    "slimming_penalty": slimming.slimming_penalty_from_config,
    "channel_mask": slimming.channel_mask_from_config,
}


@pytest.fixture()
def registry():
  """The trainer's registry holds this module's builders."""
  for name, fn in _REGISTRY.items():
    assert train.ALGORITHMS[name] is fn


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)},
      "bn": {"scale": jnp.asarray([0.5, 0.01, 0.8, -0.02, 0.3, 0.005], jnp.float32),
             "bias": jnp.asarray(rng.normal(size=(6,)), jnp.float32)},
      "bn2": {"scale": jnp.asarray([0.6, 0.015, -0.4], jnp.float32),
              "bias": jnp.zeros((3,), jnp.float32)},
      "fc": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)},
  }


def _grads(seed, scale=0.1):
  rng = np.random.default_rng(100 + seed)
  return jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), _params())


def _np_soft(v, t):
  return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


# ---------------------------------------------------------------------------
# network_slimming: the update, in the order of the authors' code


def test_network_slimming_matches_numpy_code_order():
  """SGD-momentum + wd, then γ pull with α = 1/lr, then ξ ← S(...) with the new γ."""
  lr_values = {0: 0.1, 1: 0.1, 2: 0.01, 3: 0.01, 4: 0.005, 5: 0.005, 6: 0.005}
  sched = optax.piecewise_constant_schedule(0.1, {2: 0.1, 4: 0.5})
  for t, v in lr_values.items():
    assert float(sched(t)) == pytest.approx(v)
  s, beta, wd, mom = 4.0, 10.0, 1e-2, 0.9
  tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(sched, momentum=mom),
                   network_slimming(sched, s, beta, seed=3))
  params = _params()
  state = tx.init(params)
  xi0 = find_states(state, NetworkSlimmingState)[0].xi
  assert xi0["conv"]["kernel"] is None and xi0["bn"]["bias"] is None
  for leaf in (xi0["bn"]["scale"], xi0["bn2"]["scale"]):
    a = np.asarray(leaf)
    assert np.all((a >= 0.47) & (a < 0.53)) and np.ptp(a) > 0

  ref = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  ref_xi = {k: np.asarray(xi0[k]["scale"], np.float64) for k in ("bn", "bn2")}
  trace = jax.tree.map(np.zeros_like, ref)
  step = jax.jit(tx.update)
  zeros_seen = []
  for t in range(7):
    g = _grads(t)
    updates, state = step(g, state, params)
    params = optax.apply_updates(params, updates)
    # numpy reference, float64
    lr = lr_values[t]
    alpha = 1.0 / lr
    for path in [("conv", "kernel"), ("bn", "scale"), ("bn", "bias"), ("bn2", "scale"),
                 ("bn2", "bias"), ("fc", "kernel")]:
      a, b = path
      d = np.asarray(g[a][b], np.float64) + wd * ref[a][b]
      trace[a][b] = d + mom * trace[a][b]
      proposal = ref[a][b] - lr * trace[a][b]
      if b == "scale":
        gamma = (alpha * proposal + beta * ref_xi[a]) / (alpha + beta)
        ref_xi[a] = _np_soft((alpha * ref_xi[a] + beta * gamma) / (alpha + beta),
                             s / (alpha + beta))
        ref[a][b] = gamma
      else:
        ref[a][b] = proposal
    xi = find_states(state, NetworkSlimmingState)[0].xi
    for a in ("bn", "bn2"):
      np.testing.assert_allclose(np.asarray(xi[a]["scale"]), ref_xi[a], rtol=2e-5, atol=2e-6)
      np.testing.assert_array_equal(np.asarray(xi[a]["scale"]) == 0, ref_xi[a] == 0)
    jax.tree.map(lambda x, r: np.testing.assert_allclose(np.asarray(x), r, rtol=2e-5, atol=2e-6),
                 params, ref)
    zeros_seen.append(int(sum((ref_xi[a] == 0).sum() for a in ref_xi)))
  # The thresholds produced exact zeros, but not everywhere.
  assert 0 < zeros_seen[-1] < 9
  assert int(find_states(state, NetworkSlimmingState)[0].count) == 7
  # The large scales kept a non-zero copy; the tiny ones lost it.
  assert set(removable_channels(state)["bn/scale"].tolist()) >= {1, 3, 5}
  assert 0 not in removable_channels(state)["bn/scale"].tolist()


def test_zero_learning_rate_is_no_pull_and_no_shrink():
  params = _params()
  tx = network_slimming(0.0, 1.0, 100.0)
  state = tx.init(params)
  u = jax.tree.map(jnp.zeros_like, params)
  new_u, new_state = tx.update(u, state, params)
  for leaf in jax.tree.leaves(new_u):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)
  jax.tree.map(np.testing.assert_array_equal, new_state.xi, state.xi)


def test_xi_init_options_and_seed():
  params = _params()
  a = network_slimming(0.1, 0.1, 1.0, seed=0).init(params).xi["bn"]["scale"]
  b = network_slimming(0.1, 0.1, 1.0, seed=0).init(params).xi["bn"]["scale"]
  c = network_slimming(0.1, 0.1, 1.0, seed=1).init(params).xi["bn"]["scale"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  d = network_slimming(0.1, 0.1, 1.0, xi_init=(0.2, 0.2)).init(params).xi["bn2"]["scale"]
  np.testing.assert_allclose(d, 0.2)
  e = network_slimming(0.1, 0.1, 1.0, xi_init="params").init(params).xi
  np.testing.assert_array_equal(e["bn"]["scale"], params["bn"]["scale"])


def test_one_step_closed_form_with_params_init():
  """xi0 = gamma, zero proposal: gamma stays, xi = S_{s lr/(1+beta lr)}(gamma)."""
  params = {"bn": {"scale": jnp.asarray([0.5, -0.3, 0.01, 0.0])}}
  tx = network_slimming(0.2, s=0.5, beta=4.0, xi_init="params")
  u, st = tx.update({"bn": {"scale": jnp.zeros(4)}}, tx.init(params), params)
  np.testing.assert_allclose(u["bn"]["scale"], 0.0, atol=1e-7)
  thr = 0.5 * 0.2 / (1 + 4.0 * 0.2)
  np.testing.assert_allclose(st.xi["bn"]["scale"], _np_soft(np.array([0.5, -0.3, 0.01, 0.0]), thr),
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# network_slimming on a small conv net with batch norm


def _synthetic(n=256, hw=8, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, hw, hw, 3)).astype(np.float32)
  w = rng.normal(size=(3, classes))
  y = np.argmax(x.mean(axis=(1, 2)) @ w, axis=-1).astype(np.int32)
  return x, y


def test_small_vgg_training_gives_exact_zeros_and_follows_the_update():
  lr, s, beta, wd = 0.1, 0.5, 10.0, 1e-4
  model = models.VGG(widths=(8, "M", 16), num_classes=4, in_channels=3, input_size=8,
                     rngs=nnx.Rngs(0))
  sgd = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9))
  tx = optax.chain(sgd, network_slimming(lr, s, beta))
  state, train_def, _ = train.create_train_state(model, tx, set_bn_scales)
  for path, leaf in tree_lib.leaves_with_paths(state.params):
    if tree_lib.bn_scales(path, leaf):
      np.testing.assert_array_equal(np.asarray(leaf), 0.5)
  train_step = train.make_train_step(train_def, tx)
  x, y = _synthetic()

  def batch(t):
    i = (t * 32) % len(y)
    return {"image": jnp.asarray(x[i:i + 32]), "label": jnp.asarray(y[i:i + 32])}

  def loss_fn(params, model_state, b):
    m = nnx.merge(train_def, params, model_state)
    return optax.softmax_cross_entropy_with_integer_labels(m(b["image"]), b["label"]).mean()

  losses = []
  for t in range(40):
    state, m = train_step(state, batch(t))
    losses.append(float(m["loss_sum"]) / int(m["count"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns

  # One more step, checked against the formulas.
  prev = state
  b = batch(40)
  grads = jax.jit(jax.grad(loss_fn))(prev.params, prev.model_state, b)
  sgd_u, _ = jax.jit(sgd.update)(grads, prev.opt_state[0], prev.params)
  proposal = optax.apply_updates(prev.params, sgd_u)
  state, _ = train_step(prev, b)
  xi_prev = find_states(prev.opt_state, NetworkSlimmingState)[0].xi
  xi_new = find_states(state.opt_state, NetworkSlimmingState)[0].xi
  alpha = 1.0 / lr
  flat_prev = dict(tree_lib.leaves_with_paths(xi_prev))
  flat_new = dict(tree_lib.leaves_with_paths(xi_new))
  flat_prop = dict(tree_lib.leaves_with_paths(proposal))
  flat_gamma = dict(tree_lib.leaves_with_paths(state.params))
  assert sorted(flat_prev) == ["features/0/bn/scale", "features/1/bn/scale"]
  n_zero = 0
  for path in flat_prev:
    xp = np.asarray(flat_prev[path], np.float64)
    gamma = np.asarray(flat_gamma[path], np.float64)
    want_gamma = (alpha * np.asarray(flat_prop[path], np.float64) + beta * xp) / (alpha + beta)
    np.testing.assert_allclose(gamma, want_gamma, rtol=1e-4, atol=1e-6)
    want_xi = _np_soft((alpha * xp + beta * gamma) / (alpha + beta), s / (alpha + beta))
    np.testing.assert_allclose(np.asarray(flat_new[path]), want_xi, rtol=1e-4, atol=1e-6)
    n_zero += int((np.asarray(flat_new[path]) == 0).sum())
  # Exact zeros appeared, the net still has live channels.
  removable = removable_channels(state.opt_state)
  assert 0 < n_zero == sum(len(v) for v in removable.values()) < 24
  # gamma is pulled toward xi: where xi = 0, gamma is much smaller than elsewhere.
  zero_g, live_g = [], []
  for path, idx in removable.items():
    g = np.abs(np.asarray(flat_gamma[path]))
    mask = np.zeros(g.shape, bool)
    mask[idx] = True
    zero_g.extend(g[mask])
    live_g.extend(g[~mask])
  assert np.max(zero_g) < 0.3 * np.median(live_g)


# ---------------------------------------------------------------------------
# slimming_penalty


def _penalty(kind, g, p=0.5, a=None, lam=1.0, eps=1e-8):
  """r(γ) written out, differentiated by jax.grad in the tests."""
  ag = jnp.abs(g)
  if kind == "l1":
    return ag
  if kind == "lp":
    return (ag + eps) ** p
  if kind == "tl1":
    return (a + 1) * ag / (a + ag)
  if kind == "mcp":
    return jnp.where(ag <= a * lam, lam * ag - g ** 2 / (2 * a), a * lam ** 2 / 2)
  return jnp.where(ag <= lam, lam * ag,
                   jnp.where(ag <= a * lam, (2 * a * lam * ag - g ** 2 - lam ** 2) / (2 * (a - 1)),
                             lam ** 2 * (a + 1) / 2))


def _table(kind, g, p=0.5, a=None, lam=1.0, eps=1e-8):
  """The ALGORITHMS.md §2 table (and the standard MCP/SCAD derivatives), numpy float64."""
  g = np.asarray(g, np.float64)
  sg, ag = np.sign(g), np.abs(g)
  if kind == "l1":
    return sg
  if kind == "lp":
    return p * sg / (ag + eps) ** (1 - p)
  if kind == "tl1":
    return a * (a + 1) * sg / (a + ag) ** 2
  if kind == "mcp":
    return sg * np.maximum(lam - ag / a, 0)
  return sg * np.where(ag <= lam, lam, np.maximum(a * lam - ag, 0) / (a - 1))


_KINDS = [
    ("l1", {}, {}),
    ("lp", {"p": 0.5}, {"p": 0.5}),
    ("lp", {"p": 0.75, "eps": 1e-3}, {"p": 0.75, "eps": 1e-3}),
    ("tl1", {}, {"a": 1.0}),
    ("tl1", {"a": 0.5}, {"a": 0.5}),
    ("mcp", {"a": 2.0, "lam": 0.4}, {"a": 2.0, "lam": 0.4}),
    ("mcp", {}, {"a": 3.0, "lam": 1.0}),
    ("scad", {"lam": 0.2}, {"a": 3.7, "lam": 0.2}),
]


@pytest.mark.parametrize("kind,kwargs,full", _KINDS)
def test_penalty_gradient_matches_autodiff_and_table(kind, kwargs, full):
  # Points away from 0 and from the MCP/SCAD kinks (0.2, 0.74, 0.8, 3).
  g = jnp.asarray([-1.3, -0.5, -0.11, 0.03, 0.3, 0.6, 0.9, 1.7, 4.0], jnp.float32)
  params = {"bn": {"scale": g, "bias": jnp.ones(9)}, "conv": {"kernel": jnp.ones((3, 3, 1, 9))}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  s = 0.3
  tx = slimming_penalty(kind, s, **kwargs)
  u, state = jax.jit(tx.update)(zeros, tx.init(params), params)
  got = np.asarray(u["bn"]["scale"], np.float64) / s
  auto = np.asarray(jax.grad(lambda x: jnp.sum(_penalty(kind, x, **full)))(g))
  np.testing.assert_allclose(got, auto, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(got, _table(kind, g, **full), rtol=2e-5, atol=1e-6)
  # Other leaves untouched; count advances.
  np.testing.assert_array_equal(u["bn"]["bias"], 0.0)
  np.testing.assert_array_equal(u["conv"]["kernel"], 0.0)
  assert isinstance(state, SlimmingPenaltyState) and int(state.count) == 1
  # At 0 the subgradient chosen is 0.
  z = {"bn": {"scale": jnp.zeros(9), "bias": jnp.ones(9)}, "conv": params["conv"]}
  u0, _ = tx.update(zeros, tx.init(z), z)
  np.testing.assert_array_equal(u0["bn"]["scale"], 0.0)


def test_penalty_before_sgd_is_subgradient_descent():
  params = _params()
  g = _grads(0)
  tx = optax.chain(slimming_penalty("tl1", 0.01, a=2.0), optax.sgd(0.1))
  u, _ = tx.update(g, tx.init(params), params)
  gam = np.asarray(params["bn"]["scale"], np.float64)
  want = -0.1 * (np.asarray(g["bn"]["scale"]) + 0.01 * _table("tl1", gam, a=2.0))
  np.testing.assert_allclose(u["bn"]["scale"], want, rtol=1e-5)
  np.testing.assert_allclose(u["fc"]["kernel"], -0.1 * np.asarray(g["fc"]["kernel"]), rtol=1e-6)


# ---------------------------------------------------------------------------
# channel_mask


def test_channel_mask_holds_channels_and_bias_at_zero():
  params = _params()
  tx = optax.chain(optax.sgd(0.1, momentum=0.9),
                   channel_mask({"bn/scale": [1, 4], "bn2/scale": [2]}))
  state = tx.init(params)
  cm = find_states(state, ChannelMaskState)[0]
  np.testing.assert_array_equal(cm.masks["bn"]["bias"], [1, 0, 1, 1, 0, 1])
  assert cm.masks["conv"]["kernel"] is None
  p = params
  for t in range(4):
    u, state = tx.update(_grads(t), state, p)
    p = optax.apply_updates(p, u)
    for a, idx in (("bn", [1, 4]), ("bn2", [2])):
      for b in ("scale", "bias"):
        np.testing.assert_array_equal(np.asarray(p[a][b])[idx], 0.0)
  # Unmasked channels follow plain SGD-momentum.
  ref_tx = optax.sgd(0.1, momentum=0.9)
  rs, q = ref_tx.init(params), params
  for t in range(4):
    u, rs = ref_tx.update(_grads(t), rs, q)
    q = optax.apply_updates(q, u)
  keep = [0, 2, 3, 5]
  np.testing.assert_allclose(np.asarray(p["bn"]["scale"])[keep],
                             np.asarray(q["bn"]["scale"])[keep], rtol=1e-6)
  np.testing.assert_allclose(p["fc"]["kernel"], q["fc"]["kernel"], rtol=1e-6)


# ---------------------------------------------------------------------------
# The Optax contract for every transform


def _transforms():
  return {
      "network_slimming": (lambda: network_slimming(
          optax.exponential_decay(0.1, 2, 0.5), 0.5, 5.0), NetworkSlimmingState),
      "slimming_penalty": (lambda: slimming_penalty("lp", 0.05, p=0.75), SlimmingPenaltyState),
      "channel_mask": (lambda: channel_mask({"bn/scale": [0, 3]}), ChannelMaskState),
  }


@pytest.mark.parametrize("name", list(_transforms()))
def test_jit_matches_eager_in_a_chain(name):
  make, state_type = _transforms()[name]
  tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9), make()) \
      if name != "slimming_penalty" else optax.chain(make(), optax.sgd(0.1, momentum=0.9))
  grads = [_grads(t) for t in range(4)]
  p1, _ = run_updates(tx, _params(), grads)
  p2, s2 = run_updates(tx, _params(), grads, jit=True)
  assert_trees_close(p1, p2)
  found = find_states(s2, state_type)
  assert len(found) == 1 and int(found[0].count) == 4


def test_inject_hyperparams_network_slimming():
  sched = optax.piecewise_constant_schedule(0.1, {2: 0.1})
  direct = optax.chain(optax.sgd(sched), network_slimming(sched, 0.5, 5.0))
  injected = optax.chain(
      optax.inject_hyperparams(optax.sgd)(learning_rate=sched),
      optax.inject_hyperparams(network_slimming, static_args=("filter_fn", "xi_init"))(
          learning_rate=sched, s=0.5, beta=5.0))
  grads = [_grads(t) for t in range(4)]
  p1, s1 = run_updates(direct, _params(), grads)
  p2, s2 = run_updates(injected, _params(), grads, jit=True)
  assert_trees_close(p1, p2)
  assert_trees_close(find_states(s1, NetworkSlimmingState)[0].xi,
                     find_states(s2, NetworkSlimmingState)[0].xi)


def test_inject_hyperparams_penalty_and_mask():
  direct = optax.chain(slimming_penalty("scad", 0.1, lam=0.3), optax.sgd(0.1),
                       channel_mask({"bn2/scale": [1]}))
  injected = optax.chain(
      optax.inject_hyperparams(slimming_penalty, static_args=("kind", "filter_fn"))(
          "scad", 0.1, lam=0.3),
      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
      optax.inject_hyperparams(channel_mask, static_args=("pruned",))({"bn2/scale": [1]}))
  p = _params()
  u1, _ = direct.update(_grads(0), direct.init(p), p)
  u2, s2 = jax.jit(injected.update)(_grads(0), injected.init(p), p)
  assert_trees_close(u1, u2)
  assert len(find_states(s2, SlimmingPenaltyState)) == 1
  assert len(find_states(s2, ChannelMaskState)) == 1


@pytest.mark.parametrize("name", list(_transforms()))
def test_multisteps_counts_optimizer_steps(name):
  make, state_type = _transforms()[name]
  inner = optax.chain(optax.sgd(0.1), make()) if name != "slimming_penalty" else \
      optax.chain(make(), optax.sgd(0.1))
  grads = [_grads(t) for t in range(4)]
  p, state, q = multisteps_and_reference(inner, _params(), grads, jit=True)
  assert_trees_close(p, q, rtol=1e-5, atol=1e-6)
  assert int(find_states(state, state_type)[0].count) == 2


class _BNNet(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 6, (3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(6, rngs=rngs)
    self.fc = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc(jnp.mean(nnx.relu(self.bn(self.conv(x))), axis=(1, 2)))


@pytest.mark.parametrize("name", list(_transforms()))
def test_nnx_optimizer(name):
  make, state_type = _transforms()[name]
  tx_make = (lambda: optax.chain(make(), optax.sgd(0.1))) if name == "slimming_penalty" else \
      (lambda: optax.chain(optax.sgd(0.1), make()))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 5, 3)), jnp.float32)

  def loss(m):
    return jnp.mean(m(x) ** 2)

  model = _BNNet(nnx.Rngs(0))
  opt = nnx.Optimizer(model, tx_make(), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt):
    opt.update(model, nnx.grad(loss)(model))

  for _ in range(3):
    step(model, opt)
  # Reference: the same transform on the pure params tree with a functional loop.
  ref_model = _BNNet(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(ref_model, nnx.Param, ...)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)
  tx = tx_make()
  st = tx.init(params)
  @jax.jit
  def ref_step(params, st):  # training-mode BN uses batch statistics: `rest` is not needed
    g = jax.grad(lambda p: loss(nnx.merge(graphdef, p, rest)))(params)
    u, st = tx.update(g, st, params)
    return optax.apply_updates(params, u), st

  for _ in range(3):
    params, st = ref_step(params, st)
  got = nnx.as_pure(nnx.state(model, nnx.Param))
  np.testing.assert_allclose(got["bn"]["scale"], params["bn"]["scale"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["fc"]["kernel"], params["fc"]["kernel"], rtol=1e-4, atol=1e-6)
  found = find_states(opt.opt_state, state_type)
  assert len(found) == 1
  if name == "network_slimming":
    assert list(removable_channels(opt.opt_state)) == ["bn/scale"]
  if name == "channel_mask":
    np.testing.assert_array_equal(np.asarray(model.bn.scale[...])[[0, 3]], 0.0)
    np.testing.assert_array_equal(np.asarray(model.bn.bias[...])[[0, 3]], 0.0)


# ---------------------------------------------------------------------------
# Helpers


def test_removable_channels_accepts_state_opt_state_and_xi():
  xi = {"a": {"scale": jnp.asarray([0.0, 1.0, 0.0])}, "b": {"scale": jnp.ones(2)},
        "c": {"kernel": None}}
  st = NetworkSlimmingState(count=jnp.zeros([], jnp.int32), xi=xi)
  for x in (st, (optax.EmptyState(), st), xi):
    got = removable_channels(x)
    assert list(got) == ["a/scale", "b/scale"]
    np.testing.assert_array_equal(got["a/scale"], [0, 2])
    assert got["b/scale"].size == 0
  with pytest.raises(ValueError, match="2 NetworkSlimmingState"):
    removable_channels((st, st))


def test_apply_sparse_scales_zeroes_exactly_the_xi_zero_scales():
  params = {"a": {"scale": jnp.asarray([0.3, -0.2, 1e-4]), "bias": jnp.asarray([1.0, 2.0, 3.0])},
            "c": {"kernel": jnp.ones((2, 3))}}
  xi = {"a": {"scale": jnp.asarray([0.0, 0.5, 0.0]), "bias": None}, "c": {"kernel": None}}
  st = NetworkSlimmingState(count=jnp.zeros([], jnp.int32), xi=xi)
  for x in (st, (optax.EmptyState(), st), xi):
    got = jax.jit(apply_sparse_scales)(params, x)
    np.testing.assert_array_equal(got["a"]["scale"], np.asarray([0.0, -0.2, 0.0], np.float32))
    np.testing.assert_array_equal(got["a"]["bias"], params["a"]["bias"])
    np.testing.assert_array_equal(got["c"]["kernel"], params["c"]["kernel"])
  with pytest.raises(ValueError, match="2 NetworkSlimmingState"):
    apply_sparse_scales(params, (st, st))
  with pytest.raises(ValueError, match="structure of params"):
    apply_sparse_scales(params, {"a": {"scale": jnp.zeros(3)}})


def test_set_bn_scales():
  p = set_bn_scales(_params(), 0.25)
  np.testing.assert_array_equal(p["bn"]["scale"], 0.25)
  np.testing.assert_array_equal(p["bn2"]["scale"], 0.25)
  np.testing.assert_array_equal(p["bn"]["bias"], _params()["bn"]["bias"])


def test_global_gamma_pruning_is_the_lowest_abs_gamma():
  rng = np.random.default_rng(5)
  params = {"l0": {"scale": jnp.asarray(rng.normal(size=7), jnp.float32)},
            "l1": {"scale": jnp.asarray(rng.normal(size=11), jnp.float32)},
            "l2": {"kernel": jnp.ones((3, 4))}}
  allg = np.concatenate([np.abs(params["l0"]["scale"]), np.abs(params["l1"]["scale"])])
  for frac in (0.0, 0.3, 0.5, 0.9):
    got = pipelines.global_gamma_pruning(params, frac, min_channels=0)
    k = math.floor(frac * 18)
    chosen = set(np.argsort(allg, kind="stable")[:k].tolist())
    flat = {i for i in got["l0/scale"]} | {7 + i for i in got["l1/scale"]}
    assert flat == chosen
  # min_channels: a layer of tiny scales keeps its largest ones; the count stays k.
  params = {"a": {"scale": jnp.asarray([0.01, 0.02, 0.03])},
            "b": {"scale": jnp.asarray([0.5, 0.6, 0.7, 0.8])}}
  got = pipelines.global_gamma_pruning(params, 0.5, min_channels=1)
  assert got == {"a/scale": [0, 1], "b/scale": [0]}
  assert pipelines.global_gamma_pruning(params, 0.5, min_channels=0) == {
      "a/scale": [0, 1, 2], "b/scale": []}
  with pytest.raises(ValueError, match="min_channels"):
    pipelines.global_gamma_pruning(params, 0.9, min_channels=2)


# ---------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(learning_rate=-0.1), ValueError, "learning_rate"),
    (dict(s=-1.0), ValueError, "s must be >= 0"),
    (dict(beta=float("nan")), ValueError, "beta"),
    (dict(beta="big"), TypeError, "beta"),
    (dict(xi_init=(0.6, 0.4)), ValueError, "xi_init"),
    (dict(xi_init="zeros"), ValueError, "xi_init"),
    (dict(filter_fn="scale"), TypeError, "filter_fn"),
])
def test_network_slimming_bad_arguments(kwargs, exc, match):
  args = dict(learning_rate=0.1, s=0.1, beta=1.0)
  args.update(kwargs)
  with pytest.raises(exc, match=match):
    network_slimming(**args)


def test_network_slimming_needs_params_and_a_selection():
  tx = network_slimming(0.1, 0.1, 1.0)
  with pytest.raises(ValueError, match="selected no parameter"):
    tx.init({"fc": {"kernel": jnp.ones((2, 2))}})
  with pytest.raises(ValueError, match="needs params"):
    tx.update(_params(), tx.init(_params()))


@pytest.mark.parametrize("args,kwargs,match", [
    (("l2", 0.1), {}, "kind must be one of"),
    (("l1", -0.1), {}, "s must be >= 0"),
    (("lp", 0.1), dict(p=1.0), "p must be in"),
    (("lp", 0.1), dict(p=0.0), "p must be in"),
    (("lp", 0.1), dict(eps=0.0), "eps must be > 0"),
    (("tl1", 0.1), dict(a=0.0), "a must be > 0"),
    (("scad", 0.1), dict(a=2.0), "a must be > 2"),
    (("mcp", 0.1), dict(lam=-1.0), "lam must be > 0"),
    (("l1", 0.1), dict(p=0.5), "p=0.5 does not apply to kind='l1'"),
    (("tl1", 0.1), dict(lam=0.5), "lam=0.5 does not apply"),
])
def test_penalty_bad_arguments(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    slimming_penalty(*args, **kwargs)


@pytest.mark.parametrize("pruned,exc,match", [
    ("bn/scale", TypeError, "mapping"),
    ({"bn/scale": 3}, TypeError, "sequence"),
    ({"bn/scale": [1.5]}, TypeError, "ints"),
])
def test_channel_mask_bad_arguments(pruned, exc, match):
  with pytest.raises(exc, match=match):
    channel_mask(pruned)


def test_channel_mask_checks_paths_and_indices_at_init():
  with pytest.raises(ValueError, match="not a parameter"):
    channel_mask({"bn3/scale": [0]}).init(_params())
  with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
    channel_mask({"bn/scale": [6]}).init(_params())


def test_docstring_examples():
  results = doctest.testmod(slimming, extraglobs={"jax": jax},
                            optionflags=doctest.NORMALIZE_WHITESPACE)
  assert results.attempted >= 3 and results.failed == 0


def test_config_variants():
  for mod in (vgg_cifar10_slimming, resnet_cifar10_slimming):
    for method in mod.METHODS:
      for size in ("", "cpu", "smoke"):
        c = mod.get_config(",".join(v for v in (method, size) if v))
        assert (c.algorithm.name == "network_slimming") == (method == "proximal")
        assert ("pipeline" in c) == (method != "proximal")
        algo = _REGISTRY[c.algorithm.name](c.algorithm, dict(
            steps_per_epoch=10, total_steps=100, lr_schedule=optax.constant_schedule(0.1)))
        assert len(algo.before) + len(algo.after) == 1
    with pytest.raises(ValueError, match="variant"):
      mod.get_config("l1,tl1")
    with pytest.raises(ValueError, match="variant"):
      mod.get_config("fast")
  full = vgg_cifar10_slimming.get_config("proximal")
  assert (full.num_epochs, full.batch_size, full.algorithm.s, full.algorithm.beta) == (
      160.0, 64, 0.0045, 100.0)
  assert tuple(full.lr.boundaries_epochs) == (80.0, 120.0)
  assert resnet_cifar10_slimming.get_config("proximal").algorithm.beta == 0.25


# ---------------------------------------------------------------------------
# Through the trainer: proximal single run and the three-stage pipeline


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("cifar")
  write_fake_cifar10(str(d))
  return str(d)


def test_proximal_smoke_run_reports_removable_channels(registry, cifar_dir, tmp_path):
  c = vgg_cifar10_slimming.get_config("proximal,smoke")
  c.data.dir = cifar_dir
  workdir = str(tmp_path / "prox")
  report = train.train_and_evaluate(c, workdir)
  rc = report["removable_channels"]
  state = pipelines.load_final_state(c, workdir)
  want = removable_channels(state.opt_state)
  assert list(rc["layers"]) == list(want) == [f"features/{i}/bn/scale" for i in range(4)]
  for path, idx in want.items():
    assert rc["layers"][path]["indices"] == idx.tolist()
  assert rc["channels"] == 8 + 16 + 16 + 32
  assert rc["removable"] == sum(len(v) for v in want.values()) > 0
  # The compacted model is the one with the xi = 0 scales zeroed: a channel goes exactly
  # when its shift is <= 0 too (relu of a non-positive constant), a positive one stays.
  flat = dict(tree_lib.leaves_with_paths(state.params))
  widths = report["compaction"]["layer_widths"]
  for path, idx in want.items():
    shift = np.asarray(flat[path.replace("scale", "bias")])
    dead = int(np.sum(shift[idx] <= 0))
    n = shift.size
    assert widths[path.replace("bn/scale", "conv")] == [n, max(n - dead, 1)], path
  assert report["compaction"]["removed_channel_groups"] > 0
  sparse = apply_sparse_scales(state.params, state.opt_state)
  assert report["sparse_test_accuracy"] == pytest.approx(
      pipelines.evaluate_state(c, state._replace(params=sparse))["accuracy"])
  assert report["compaction"]["test_accuracy"] == pytest.approx(report["sparse_test_accuracy"])


def test_pipeline_prunes_lowest_gamma_and_keeps_them_zero(registry, cifar_dir, tmp_path):
  c = vgg_cifar10_slimming.get_config("l1,smoke")
  c.data.dir = cifar_dir
  c.pipeline.prune_fraction = 0.5
  c.pipeline.min_channels = 0
  workdir = str(tmp_path / "pipe")
  result = pipelines.slimming_pipeline(c, workdir)
  state1 = pipelines.load_final_state(c, os.path.join(workdir, "train"))
  # BN scales started at 0.5 and moved: the ranking is of trained values.
  paths = [f"features/{i}/bn/scale" for i in range(4)]
  flat = dict(tree_lib.leaves_with_paths(state1.params))
  gammas = np.concatenate([np.abs(np.asarray(flat[p])) for p in paths])
  assert len(np.unique(gammas)) == gammas.size and not np.allclose(gammas, 0.5)
  k = math.floor(0.5 * gammas.size)
  offsets = np.cumsum([0] + [np.asarray(flat[p]).size for p in paths])
  chosen = {o + i for o, p in zip(offsets, paths) for i in result["pruned"][p]}
  assert chosen == set(np.argsort(gammas)[:k].tolist())
  assert result["pruned_channels"] == k and result["channels"] == gammas.size
  # Fine-tuning held them (scale and shift) at exactly zero and trained the rest.
  config2 = pipelines.finetune_config(c, result["pruned"])
  state2 = pipelines.load_final_state(config2, os.path.join(workdir, "finetune"))
  flat2 = dict(tree_lib.leaves_with_paths(state2.params))
  for p in paths:
    idx = result["pruned"][p]
    keep = np.setdiff1d(np.arange(np.asarray(flat[p]).size), idx)
    np.testing.assert_array_equal(np.asarray(flat2[p])[idx], 0.0)
    np.testing.assert_array_equal(np.asarray(flat2[p.replace("scale", "bias")])[idx], 0.0)
    assert not np.allclose(np.asarray(flat2[p])[keep], np.asarray(flat[p])[keep])
  held = result["finetune"]["held_zero_channels"]
  assert held["zero"] == k and held["channels"] == gammas.size
  assert os.path.exists(os.path.join(workdir, "pipeline.json"))
  assert result["test_accuracy"] == result["finetune"]["test_accuracy"]
  # Another prune fraction in the same workdir: stage 1 does not depend on it and is reused;
  # stage 3's finished run pruned other channels, and that is what refuses to resume.
  c.pipeline.prune_fraction = 0.25
  with pytest.raises(ValueError, match=r"finetune holds a run of a different config .*"
                                       r"algorithm.pruned"):
    pipelines.slimming_pipeline(c, workdir)


@pytest.mark.parametrize("field,value,match", [
    ("finetune.lr.schedule", "bogus", r"stage 3 \(fine-tuning\): config.pipeline.finetune.lr."
     r"schedule must be one of"),
    ("finetune.lr.boundaries_epochs", (5.0,), r"config.pipeline.finetune.lr.boundaries_epochs"
     r"\[0\] must be in \(0, 1\)"),
    ("finetune.num_epochs", float("nan"), r"config.pipeline.finetune.num_epochs must be a "
     r"finite number >= 0"),
    ("min_channels", -1, r"config.pipeline.min_channels must be an int >= 0, got -1"),
])
def test_pipeline_settings_are_checked_before_stage_1(cifar_dir, tmp_path, field, value, match):
  """Stage 3's settings failed only after stage 1 had trained, naming config.lr.* (and a NaN
  fine-tuning length silently skipped fine-tuning)."""
  c = vgg_cifar10_slimming.get_config("l1,smoke")
  c.data.dir = cifar_dir
  node = c.pipeline
  *parents, last = field.split(".")
  for p in parents:
    node = node[p]
  node[last] = value
  with pytest.raises(ValueError, match=match):
    pipelines.slimming_pipeline(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "train")


def test_network_slimming_xi_in_float32_with_bf16_scales():
  """bf16 BN scales: xi must still reach exact zeros, as it does with float32 scales."""
  rng = np.random.default_rng(0)
  gamma = rng.uniform(0.0, 0.02, 8).astype(np.float32)
  runs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    params = {"bn": {"scale": jnp.asarray(gamma, dtype)}}
    tx = network_slimming(0.1, s=0.05, beta=0.25)
    state = tx.init(params)
    xi = find_states(state, NetworkSlimmingState)[0].xi["bn"]["scale"]
    assert xi.dtype == jnp.float32
    step = jax.jit(tx.update)
    for _ in range(200):
      u, state = step(jax.tree.map(jnp.zeros_like, params), state, params)
      params = optax.apply_updates(params, u)
    runs[dtype] = np.asarray(find_states(state, NetworkSlimmingState)[0].xi["bn"]["scale"])
  assert (runs[jnp.float32] == 0).sum() > 0
  np.testing.assert_array_equal(runs[jnp.bfloat16] == 0, runs[jnp.float32] == 0)


def test_float64_scales_are_updated_in_float64():
  """Under x64 the slimming transforms compute in float64 (they rounded through float32)."""
  with jax.enable_x64(True):
    params = {"bn": {"scale": jnp.asarray([0.123456789012345, -0.5], jnp.float64)}}
    u = {"bn": {"scale": jnp.asarray([1e-9, 0.1 + 1e-12], jnp.float64)}}
    # s = beta = 0: network_slimming passes the update through and xi stays at its init.
    tx = slimming.network_slimming(0.1, 0.0, 0.0, xi_init="params")
    out, state = jax.jit(tx.update)(u, tx.init(params), params)
    np.testing.assert_allclose(out["bn"]["scale"], u["bn"]["scale"], rtol=0, atol=1e-16)
    np.testing.assert_array_equal(state.xi["bn"]["scale"], params["bn"]["scale"])
    # s > 0: the pulled xi moves by exactly the float64 soft-threshold step.
    tx = slimming.network_slimming(lambda count: 0.1, 1e-9, 1.0, xi_init="params")
    _, state = tx.update(jax.tree.map(jnp.zeros_like, u), tx.init(params), params)
    thr = 1e-9 * 0.1 / (1.0 + 0.1)
    np.testing.assert_allclose(state.xi["bn"]["scale"],
                               params["bn"]["scale"] - np.sign(params["bn"]["scale"]) * thr,
                               rtol=1e-14)
    tx = slimming.slimming_penalty("l1", 0.0)
    out, _ = tx.update(u, tx.init(params), params)
    np.testing.assert_array_equal(out["bn"]["scale"], u["bn"]["scale"])


@pytest.mark.parametrize("kind,x,kwargs,exc,match", [
    ("scad", [0.5, 1.5], dict(a=1.0), ValueError, "a must be > 2"),
    ("mcp", [0.5], dict(a=-1.0), ValueError, "a must be > 0"),
    ("lp", [0.5], dict(p=3.0), ValueError, r"p must be in \(0, 1\)"),
    ("mcp", [0.5], dict(lam=-2.0), ValueError, "lam must be > 0"),
    ("lp", [0.5], dict(eps=0.0), ValueError, "eps must be > 0"),
    ("tl1", np.array([1, 2]), {}, TypeError, "floating dtype"),
])
def test_penalty_derivative_rejects_arguments_outside_its_domain(kind, x, kwargs, exc, match):
  """The public derivative checks what slimming_penalty checks (SCAD with a = 1 gave NaN,
  integer x was truncated to 0)."""
  with pytest.raises(exc, match=match):
    slimming.penalty_derivative(kind, jnp.asarray(x), **kwargs)
