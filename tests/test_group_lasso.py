"""Nonconvex sparse group lasso: hand-computed steps, zero groups, the Optax contract."""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import pipelines
from sparsejax import tree as tree_lib
from sparsejax.optim import find_states
from sparsejax.optim.group_lasso import (
    KINDS, SparseGroupLassoState, group_axis, sgl_report, sparse_group_lasso,
    sparse_group_lasso_from_config, sparse_params)
from fake_data import write_fake_mnist
from optax_contract import (assert_trees_close, multisteps_and_reference,
                            nnx_optimizer_step, run_updates)

LAM, BETA0, N, A = 0.1, 2.5, 7.0, 0.8


# ---------------------------------------------------------------------------
# numpy references, written from the formulas in ALGORITHMS.md section 2/3


def _np_threshold(kind, x, tau, a=A):
  x = np.asarray(x, np.float64)
  ax = np.abs(x)
  if kind == "l0":
    return np.where(ax > np.sqrt(2 * tau), x, 0.0)
  if kind == "l1":
    return np.sign(x) * np.maximum(ax - tau, 0.0)
  if kind == "lhalf":
    keep = ax > 1.5 * tau ** (2 / 3)
    safe = np.where(keep, ax, 1.0)
    phi = np.arccos(np.clip((tau / 4) * (safe / 3) ** -1.5, -1, 1))
    return np.where(keep, (2 / 3) * x * (1 + np.cos(2 * np.pi / 3 - (2 / 3) * phi)), 0.0)
  assert kind == "tl1"
  t = tau * (a + 1) / a if tau <= a * a / (2 * (a + 1)) else np.sqrt(2 * tau * (a + 1)) - a / 2
  phi = np.arccos(np.clip(1 - 27 * tau * a * (a + 1) / (2 * (a + ax) ** 3), -1, 1))
  z = np.sign(x) * ((2 / 3) * (a + ax) * np.cos(phi / 3) - 2 * a / 3 + ax / 3)
  return np.where(ax > t, z, 0.0)


def _np_group_grad(w, dense_group):
  """lam sqrt|g| W_g / ||W_g|| (0 on a zero group), groups as group_axis."""
  w = np.asarray(w, np.float64)
  ax = w.ndim - 1 if w.ndim >= 3 else (0 if dense_group == "input" else 1)
  red = tuple(i for i in range(w.ndim) if i != ax)
  norm = np.sqrt(np.sum(w * w, axis=red, keepdims=True))
  size = w.size // w.shape[ax]
  return LAM * np.sqrt(size) * np.where(norm > 0, w / np.where(norm > 0, norm, 1), 0.0)


def _params(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(0.3 * rng.normal(size=s), jnp.float32)
  return {"conv": {"kernel": f(3, 3, 2, 4), "bias": f(4)},
          "dense": {"kernel": f(6, 5), "bias": f(5)},
          "bn": {"scale": f(4)}}


def _grads(seed):
  rng = np.random.default_rng(100 + seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), _params())


# ---------------------------------------------------------------------------
# what one step computes


@pytest.mark.parametrize("dense_group", ["input", "output"])
@pytest.mark.parametrize("kind", KINDS)
def test_three_steps_match_numpy(kind, dense_group):
  growth, wd, eta = 2.0, 0.3, 0.05
  tx = sparse_group_lasso(LAM, BETA0, num_examples=N, kind=kind, a=A, growth=growth,
                          growth_every=1, dense_group=dense_group, bias_weight_decay=wd)
  params = _params()
  state = tx.init(params)
  w = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
  beta = lambda layer, t: BETA0 * growth ** t if layer == "conv" else BETA0  # conv only grows
  for t in range(3):
    g = _grads(t)
    new_g, state = tx.update(g, state, params)
    for layer in ("conv", "dense"):
      # U_t: threshold of W_t with the beta of step t-1 (U_0: threshold with beta_0).
      u = _np_threshold(kind, w[layer]["kernel"], LAM / beta(layer, max(t - 1, 0)))
      want = (np.asarray(g[layer]["kernel"]) + beta(layer, t) / N * (w[layer]["kernel"] - u)
              + _np_group_grad(w[layer]["kernel"], dense_group) / N)
      np.testing.assert_allclose(new_g[layer]["kernel"], want, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(state.u[layer]["kernel"], u, rtol=1e-5, atol=1e-7)
      assert float(state.beta[layer]["kernel"]) == pytest.approx(beta(layer, t))
      np.testing.assert_allclose(new_g[layer]["bias"],
                                 np.asarray(g[layer]["bias"]) + wd / N * w[layer]["bias"],
                                 rtol=1e-6)
    np.testing.assert_array_equal(new_g["bn"]["scale"], g["bn"]["scale"])  # not regularised
    assert state.u["bn"]["scale"] is None and state.u["conv"]["bias"] is None
    # A plain SGD step on the new gradient, then U as the authors compute it after it.
    params = jax.tree.map(lambda p, d: p - eta * d, params, new_g)
    w = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    got = sparse_params(state, params)
    for layer in ("conv", "dense"):
      want_u = _np_threshold(kind, w[layer]["kernel"], LAM / beta(layer, t))
      np.testing.assert_allclose(got[layer]["kernel"], want_u, rtol=1e-5, atol=1e-7)
      assert np.all((np.asarray(got[layer]["kernel"]) == 0) == (want_u == 0))  # exact zeros
    np.testing.assert_array_equal(got["dense"]["bias"], params["dense"]["bias"])
  assert int(state.count) == 3


def test_uniform_start_is_the_authors_and_used_once():
  tx = sparse_group_lasso(LAM, BETA0, num_examples=N, u_init="uniform", u_init_seed=3)
  params = _params()
  state = tx.init(params)
  u0 = {k: np.asarray(state.u[k]["kernel"]) for k in ("conv", "dense")}
  for v in u0.values():
    assert v.min() >= 0 and v.max() < 1 and len(np.unique(v)) == v.size
  again = tx.init(params)
  np.testing.assert_array_equal(again.u["conv"]["kernel"], u0["conv"])
  other = sparse_group_lasso(LAM, BETA0, num_examples=N, u_init="uniform", u_init_seed=4)
  assert not np.allclose(other.init(params).u["conv"]["kernel"], u0["conv"])
  np.testing.assert_array_equal(sparse_params(state, params)["conv"]["kernel"], u0["conv"])
  g = _grads(0)
  new_g, state = tx.update(g, state, params)
  w = np.asarray(params["dense"]["kernel"], np.float64)
  want = (np.asarray(g["dense"]["kernel"]) + BETA0 / N * (w - u0["dense"])
          + _np_group_grad(w, "input") / N)
  np.testing.assert_allclose(new_g["dense"]["kernel"], want, rtol=1e-5, atol=1e-6)
  # From the second step on U is the threshold of the weights (l0 by default).
  _, state = tx.update(g, state, params)
  np.testing.assert_allclose(state.u["dense"]["kernel"], _np_threshold("l0", w, LAM / BETA0))


@pytest.mark.parametrize("growth_filter,conv_grows,dense_grows", [
    (None, True, False), (tree_lib.kernels, True, True)])
def test_beta_grows_every_k_steps_on_the_chosen_layers(growth_filter, conv_grows, dense_grows):
  tx = sparse_group_lasso(LAM, BETA0, num_examples=N, growth=1.25, growth_every=3,
                          growth_filter=growth_filter)
  params, state = _params(), None
  state = tx.init(params)
  for t in range(8):
    _, state = jax.jit(tx.update)(_grads(t), state, params)
    want = BETA0 * 1.25 ** (t // 3)
    assert float(state.beta["conv"]["kernel"]) == pytest.approx(want if conv_grows else BETA0)
    assert float(state.beta["dense"]["kernel"]) == pytest.approx(want if dense_grows else BETA0)


def test_no_growth_keeps_beta():
  tx = sparse_group_lasso(LAM, BETA0, num_examples=N, growth=3.0, growth_every=None)
  state = tx.init(_params())
  for t in range(3):
    _, state = tx.update(_grads(t), state, _params())
  assert float(state.beta["conv"]["kernel"]) == BETA0


def test_group_axis():
  assert group_axis(jnp.zeros((3, 3, 2, 8))) == 3
  assert group_axis(jnp.zeros((5, 2, 8))) == 2
  assert group_axis(jnp.zeros((6, 5))) == 0
  assert group_axis(jnp.zeros((6, 5)), "output") == 1


# ---------------------------------------------------------------------------
# it finds structure


def _synthetic(seed=0, n=256, d=12):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w = np.zeros(d, np.float32)
  w[:3] = [1.5, -2.0, 1.0]  # only three input features matter
  y = x @ w + 0.05 * rng.normal(size=n).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("kind", KINDS)
def test_whole_groups_of_u_become_zero(kind):
  """A dense 12 -> 10 -> 1 net on a task that uses 3 of 12 inputs: the input groups
  (rows) of the unused 9 features are exactly zero in U, the 3 used ones are not, and
  the sparse U fits the data."""
  x, y = _synthetic()
  rng = np.random.default_rng(1)
  params = {"hidden": {"kernel": jnp.asarray(0.3 * rng.normal(size=(12, 10)), jnp.float32)},
            "out": {"kernel": jnp.asarray(0.3 * rng.normal(size=(10, 1)), jnp.float32),
                    "bias": jnp.zeros((1,), jnp.float32)}}

  def loss(p):
    pred = (x @ p["hidden"]["kernel"]) @ p["out"]["kernel"] + p["out"]["bias"]
    return jnp.mean((pred[:, 0] - y) ** 2)

  tx = optax.chain(sparse_group_lasso(0.1, 1.0, num_examples=16, kind=kind,
                                      growth_every=50, growth_filter=tree_lib.kernels),
                   optax.adam(1e-2))
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  for _ in range(600):
    params, state = step(params, state)
  u = sparse_params(state, params)
  rows_zero = np.all(np.asarray(u["hidden"]["kernel"]) == 0, axis=1)
  np.testing.assert_array_equal(rows_zero, [False] * 3 + [True] * 9)
  assert float(loss(u)) < 0.01 * float(jnp.var(y))
  rep = sgl_report(state, params)
  hidden = [l for l in rep["layers"] if l["path"] == "hidden/kernel"][0]
  assert hidden["u_zero_groups"] == 9 and hidden["groups"] == 12 and hidden["group_axis"] == 0
  assert rep["u_zeros"] == sum(int((np.asarray(u[k]["kernel"]) == 0).sum())
                               for k in ("hidden", "out"))
  assert rep["kind"] == kind and rep["steps"] == 600


# ---------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(kind="scad"), ValueError, "kind"),
    (dict(lam=-0.1), ValueError, "lam"),
    (dict(beta=0.0), ValueError, "beta"),
    (dict(num_examples=0), ValueError, "num_examples"),
    (dict(num_examples=None), TypeError, "num_examples"),
    (dict(a=0.0), ValueError, "a must"),
    (dict(growth=-1.25), ValueError, "growth"),
    (dict(growth_every=0), ValueError, "growth_every"),
    (dict(growth_every=2.5), TypeError, "growth_every"),
    (dict(dense_group="rows"), ValueError, "dense_group"),
    (dict(u_init="zeros"), ValueError, "u_init"),
    (dict(bias_weight_decay=-1e-4), ValueError, "bias_weight_decay"),
    (dict(filter_fn="kernel"), TypeError, "filter_fn"),
    (dict(beta=[1.0, 2.0]), TypeError, "beta"),
])
def test_bad_arguments(kwargs, err, match):
  args = dict(lam=0.1, beta=2.5, num_examples=100)
  args.update(kwargs)
  with pytest.raises(err, match=match):
    sparse_group_lasso(**args)


def test_update_needs_params_and_kernels_need_two_dims():
  tx = sparse_group_lasso(num_examples=10)
  with pytest.raises(ValueError, match="params"):
    tx.update(_params(), tx.init(_params()))
  tx = sparse_group_lasso(num_examples=10, filter_fn=lambda path, leaf: "bn" in path)
  with pytest.raises(ValueError, match="bn/scale"):
    tx.init(_params())


def test_sparse_params_needs_one_state():
  with pytest.raises(ValueError, match="SparseGroupLassoState"):
    sparse_params(optax.adam(0.1).init(_params()), _params())


# ---------------------------------------------------------------------------
# Optax contract


def _tx(**kw):
  args = dict(lam=LAM, beta=BETA0, num_examples=N, kind="tl1", growth=1.5, growth_every=2,
              bias_weight_decay=0.1)
  args.update(kw)
  return sparse_group_lasso(**args)


def test_jit_matches_eager_in_a_chain_with_adam():
  tx = optax.chain(_tx(), optax.adam(1e-2))
  grads = [_grads(t) for t in range(5)]
  p1, s1 = run_updates(tx, _params(), grads)
  p2, s2 = run_updates(tx, _params(), grads, jit=True)
  assert_trees_close(p1, p2)
  for a, b in zip(jax.tree.leaves(sparse_params(s1, p1)),
                  jax.tree.leaves(jax.jit(sparse_params)(s2, p2))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # The chain is "SGL gradient, then Adam": the same as Adam on the SGL gradient.
  sgl, adam = _tx(), optax.adam(1e-2)
  q, ss, sa = _params(), sgl.init(_params()), adam.init(_params())
  for t in range(5):
    g, ss = sgl.update(_grads(t), ss, q)
    u, sa = adam.update(g, sa, q)
    q = optax.apply_updates(q, u)
  assert_trees_close(p1, q)


def test_inject_hyperparams():
  direct = optax.chain(_tx(), optax.sgd(0.05))
  injected = optax.chain(
      optax.inject_hyperparams(sparse_group_lasso, static_args=(
          "kind", "growth_every", "u_init_seed", "num_examples"))(
              lam=LAM, beta=BETA0, num_examples=N, kind="tl1", growth=1.5, growth_every=2,
              bias_weight_decay=0.1),
      optax.sgd(0.05))
  grads = [_grads(t) for t in range(4)]
  p1, s1 = run_updates(direct, _params(), grads)
  p2, s2 = run_updates(injected, _params(), grads, jit=True)
  assert_trees_close(p1, p2, rtol=1e-5)
  assert len(find_states(s2, SparseGroupLassoState)) == 1
  np.testing.assert_allclose(sparse_params(s2, p2)["conv"]["kernel"],
                             sparse_params(s1, p1)["conv"]["kernel"], rtol=1e-5, atol=1e-7)


def test_multisteps_counts_optimizer_steps():
  inner = optax.chain(_tx(growth_every=1), optax.sgd(0.05))
  grads = [_grads(t) for t in range(4)]
  p, state, q = multisteps_and_reference(inner, _params(), grads)
  assert_trees_close(p, q, rtol=1e-5, atol=1e-7)
  st = find_states(state, SparseGroupLassoState)[0]
  assert int(st.count) == 2
  assert float(st.beta["conv"]["kernel"]) == pytest.approx(BETA0 * 1.5)  # beta of step 1


class _ConvNet(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), padding="VALID", rngs=rngs)
    self.fc = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.relu(self.conv(x))
    return self.fc(h.reshape(h.shape[0], -1))


def test_nnx_optimizer():
  model = _ConvNet(nnx.Rngs(0))
  eta = 0.1
  tx = optax.chain(sparse_group_lasso(LAM, BETA0, num_examples=N, kind="l1"), optax.sgd(eta))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 6, 6, 2)), jnp.float32)
  w0 = {k: np.asarray(getattr(model, k).kernel[...], np.float64) for k in ("conv", "fc")}
  opt, grads = nnx_optimizer_step(model, tx, x)
  for name in ("conv", "fc"):
    u = _np_threshold("l1", w0[name], LAM / BETA0)
    g = (np.asarray(getattr(grads, name).kernel[...]) + BETA0 / N * (w0[name] - u)
         + _np_group_grad(w0[name], "input") / N)
    np.testing.assert_allclose(np.asarray(getattr(model, name).kernel[...]),
                               w0[name] - eta * g, rtol=1e-5, atol=1e-6)
  # U straight out of the nnx.Optimizer state and the model's nnx.State.
  u = sparse_params(opt.opt_state, nnx.state(model, nnx.Param))
  w1 = np.asarray(model.conv.kernel[...])
  np.testing.assert_allclose(np.asarray(u["conv"]["kernel"][...]),
                             _np_threshold("l1", w1, LAM / BETA0), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(u["fc"]["bias"][...]), np.asarray(model.fc.bias[...]))
  rep = sgl_report(opt.opt_state, nnx.state(model, nnx.Param))
  assert {l["path"] for l in rep["layers"]} == {"conv/kernel", "fc/kernel"}


# ---------------------------------------------------------------------------
# trainer builder and config


def test_from_config_growth_in_epochs_and_report():
  cfg = ml_collections.ConfigDict(dict(name="sparse_group_lasso", kind="l0", lam=0.1,
                                       beta=2.5, growth=2.0, growth_every_epochs=1.5,
                                       num_examples=N))
  alg = sparse_group_lasso_from_config(cfg, dict(steps_per_epoch=2, total_steps=10,
                                                 lr_schedule=lambda t: 0.1))
  assert len(alg.before) == 1 and alg.after == ()
  tx = optax.chain(*alg.before, optax.sgd(0.01))
  p, state = _params(), tx.init(_params())
  for t in range(4):  # growth every round(1.5 * 2) = 3 steps, conv layers only
    u, state = tx.update(_grads(t), state, p)
    p = optax.apply_updates(p, u)
  st = find_states(state, SparseGroupLassoState)[0]
  assert float(st.beta["conv"]["kernel"]) == pytest.approx(5.0)
  assert float(st.beta["dense"]["kernel"]) == pytest.approx(2.5)
  rep = alg.report(p, state)["sgl"]
  u = sparse_params(state, p)
  conv_u = np.asarray(u["conv"]["kernel"])
  layer = [l for l in rep["layers"] if l["path"] == "conv/kernel"][0]
  assert layer["u_zeros"] == int((conv_u == 0).sum())
  assert layer["u_zero_groups"] == int(np.sum(~np.any(conv_u.reshape(-1, 4) != 0, axis=0)))
  assert layer["w_zeros"] == int((np.abs(np.asarray(p["conv"]["kernel"])) < 1e-5).sum())
  assert rep["u_sparsity"] == pytest.approx(rep["u_zeros"] / rep["params"])


def test_from_config_needs_num_examples():
  cfg = ml_collections.ConfigDict(dict(name="sparse_group_lasso"))
  with pytest.raises(ValueError, match="num_examples"):
    sparse_group_lasso_from_config(cfg, dict(steps_per_epoch=1, total_steps=1,
                                             lr_schedule=lambda t: 0.1))


def test_config_variants():
  from configs import lenet5_mnist_sgl  # pylint: disable=import-outside-toplevel
  full = lenet5_mnist_sgl.get_config()
  assert (full.num_epochs, full.batch_size, full.algorithm.kind) == (200, 100, "l0")
  assert tuple(full.lr.boundaries_epochs) == (40, 80, 120, 160)
  assert full.algorithm.growth_every_epochs == 40 and full.optimizer.name == "adam"
  short = lenet5_mnist_sgl.get_config("short,tl1")
  assert short.num_epochs == 20 and tuple(short.lr.boundaries_epochs) == (4, 8, 12, 16)
  assert short.algorithm.growth_every_epochs == 4 and short.algorithm.kind == "tl1"
  for kind in KINDS:
    assert lenet5_mnist_sgl.get_config(f"smoke,{kind}").algorithm.kind == kind
  with pytest.raises(ValueError, match="variant"):
    lenet5_mnist_sgl.get_config("l0,l1")
  with pytest.raises(ValueError, match="variant"):
    lenet5_mnist_sgl.get_config("fast")


def test_trainer_smoke_run(tmp_path, monkeypatch):
  from configs import lenet5_mnist_sgl  # pylint: disable=import-outside-toplevel
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  del monkeypatch  # the registry entry is on main
  assert train.ALGORITHMS["sparse_group_lasso"] is sparse_group_lasso_from_config
  write_fake_mnist(str(tmp_path), n_train=500)
  c = lenet5_mnist_sgl.get_config("smoke")
  c.data.dir = str(tmp_path)
  c.data.train_subset = None
  c.data.test_subset = None
  c.batch_size = 50
  c.num_epochs = 3  # 10 steps per epoch
  c.algorithm.growth_every_epochs = 1
  report = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert report["test_accuracy"] >= 0.9  # the fake task is easy
  sgl = report["sgl"]
  assert {l["path"] for l in sgl["layers"]} == {
      "conv1/kernel", "conv2/kernel", "fc1/kernel", "fc2/kernel"}
  beta = {l["path"]: l["beta"] for l in sgl["layers"]}
  assert beta["conv1/kernel"] == pytest.approx(2.5 * 1.25 ** 2)  # grew after epochs 1 and 2
  assert beta["fc1/kernel"] == pytest.approx(2.5)
  assert sgl["u_zeros"] > 0 and sgl["steps"] == 30
  # The trainer also evaluated U (exact zeros) through Algorithm.eval_params.
  u_kernel_params = sum(l["params"] for l in report["layers"] if l["prunable"])
  assert report["sparse_sparsity"] == pytest.approx(sgl["u_zeros"] / u_kernel_params)
  # Every epoch's metrics line carries both sparsities; the last one is the
  # state the report describes.
  lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [10, 20, 30]
  assert lines[-1]["u_sparsity"] == pytest.approx(sgl["u_sparsity"])
  assert lines[-1]["w_sparsity_authors"] == pytest.approx(sgl["w_sparsity_authors"])
  assert lines[-1]["u_sparsity"] != lines[-1]["sparsity"]  # U's exact zeros are not W's
  # sparse_test_* evaluate U, not W: an independent evaluation of U out of the checkpoint.
  state = pipelines.load_final_state(c, str(tmp_path / "run"))
  u = sparse_params(state.opt_state, state.params)
  got = pipelines.evaluate_state(c, state._replace(params=u))
  assert report["sparse_test_accuracy"] == pytest.approx(got["accuracy"])
  assert report["sparse_test_loss"] == pytest.approx(got["loss"], rel=1e-5)
  assert report["sparse_test_loss"] != pytest.approx(report["test_loss"], rel=1e-3)
  assert math.isfinite(report["test_loss"])


def _bench_module():
  import importlib.util  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "bench_sgl.py")
  spec = importlib.util.spec_from_file_location("bench_sgl", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_bench_counts_lenet5_macs_of_live_channels():
  macs = _bench_module().lenet5_macs
  k = {"conv1/kernel": np.ones((5, 5, 1, 20)), "conv2/kernel": np.ones((5, 5, 20, 50)),
       "fc1/kernel": np.ones((800, 500)), "fc2/kernel": np.ones((500, 10))}
  dense = macs(k)
  assert dense["total"] == 24 * 24 * 25 * 20 + 8 * 8 * 25 * 20 * 50 + 800 * 500 + 500 * 10
  assert dense["live"] == {"conv1": 20, "conv2": 50, "fc1_in": 800, "fc2_in": 500}
  k["conv1/kernel"][..., 0] = 0          # conv1 filter 0 computes nothing
  k["conv2/kernel"][:, :, 1, :] = 0      # nobody reads conv1 channel 1
  k["fc1/kernel"][5::50, :] = 0          # nobody reads conv2 channel 5 (16 positions)
  k["fc1/kernel"][7, :] = 0              # position 0 of conv2 channel 7 unread
  k["fc2/kernel"][3, :] = 0              # hidden neuron 3 unread
  k["fc1/kernel"][:, 4] = 0              # hidden neuron 4 computes nothing
  got = macs(k)
  assert got["live"] == {"conv1": 18, "conv2": 49, "fc1_in": 783, "fc2_in": 498}
  assert got["total"] == (24 * 24 * 25 * 18 + 8 * 8 * 25 * 18 * 49 + 783 * 498 + 498 * 10)
  k["fc2/kernel"][:] = 0                 # nothing reaches the logits: all dead
  assert macs(k)["total"] == 0


def test_float16_weights_keep_a_tiny_threshold():
  # tau = lam / beta = 1e-8 is 0 in float16; U = H_{sqrt(2 tau)}(W) must still zero |w| < 1.4e-4.
  w = jnp.array([[1e-4, 5e-5], [2e-3, -3e-5]], jnp.float16)
  params = {"dense": {"kernel": w}}
  tx = sparse_group_lasso(2.5e-8, 2.5, num_examples=1000, kind="l0")
  state = tx.init(params)
  expected = np.array([[0, 0], [2e-3, 0]], np.float16)
  u0 = find_states(state, SparseGroupLassoState)[0].u["dense"]["kernel"]
  assert u0.dtype == jnp.float16
  np.testing.assert_array_equal(np.asarray(u0), expected)
  _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  np.testing.assert_array_equal(
      np.asarray(find_states(state, SparseGroupLassoState)[0].u["dense"]["kernel"]), expected)


def test_float64_params_are_updated_in_float64():
  """Under x64 the SGL step computes in float64 (it rounded gradients through float32)."""
  with jax.enable_x64(True):
    params = {"d": {"kernel": jnp.asarray([[0.3, 0.1 + 1e-12], [0.2, -0.4]], jnp.float64),
                    "bias": jnp.asarray([0.1, 0.2], jnp.float64)}}
    g = {"d": {"kernel": jnp.asarray([[0.1 + 1e-12, 0.2], [1e-9, 0.0]], jnp.float64),
               "bias": jnp.asarray([1e-12, 0.0], jnp.float64)}}
    tx = sparse_group_lasso(0.0, 2.5, num_examples=10, bias_weight_decay=0.0)
    state = tx.init(params)
    for _ in range(2):  # the first step keeps U_0; the second thresholds at lam / beta = 0
      out, state = jax.jit(tx.update)(g, state, params)
      assert_trees_close(out, g, rtol=0, atol=1e-17)
    # lam > 0: the group term lam sqrt|g| / N * w / ||w_g|| in float64.
    tx = sparse_group_lasso(1e-6, 2.5, num_examples=10, bias_weight_decay=0.0, u_init="threshold")
    out, _ = tx.update(jax.tree.map(jnp.zeros_like, g), tx.init(params), params)
    w = np.asarray(params["d"]["kernel"])
    group = 1e-6 * np.sqrt(2) / 10 * w / np.linalg.norm(w, axis=1, keepdims=True)
    u0 = np.where(np.abs(w) > np.sqrt(2 * 1e-6 / 2.5), w, 0.0)
    np.testing.assert_allclose(out["d"]["kernel"], group + 2.5 / 10 * (w - u0), rtol=1e-13)


def test_filter_selecting_nothing_is_an_error():
  """A mistyped filter_regex used to give u = None everywhere and a plain (dense) optimizer."""
  tx = sparse_group_lasso(0.1, 2.5, num_examples=10, filter_fn=tree_lib.regex("nomatch"))
  with pytest.raises(ValueError, match=r"sparse_group_lasso: filter_fn selected no parameter"):
    tx.init({"d": {"kernel": jnp.ones((3, 2))}})


def test_float64_initial_u_thresholds_at_a_float64_tau():
  """Under x64 U_0 = threshold(W_0) used a float32 tau = f32(lam)/f32(beta) (1e-9 off for l1)."""
  with jax.enable_x64(True):
    w = np.asarray([[0.5, -0.3], [0.2, 0.4]], np.float64)
    params = {"fc": {"kernel": jnp.asarray(w)}}
    tx = sparse_group_lasso(0.1, 2.5, num_examples=1.0, kind="l1")
    state = tx.init(params)
    expected = np.sign(w) * np.maximum(np.abs(w) - 0.1 / 2.5, 0.0)
    np.testing.assert_allclose(np.asarray(state.u["fc"]["kernel"]), expected, rtol=0, atol=1e-15)
    out, _ = tx.update({"fc": {"kernel": jnp.zeros((2, 2), jnp.float64)}}, state, params)
    grad = 2.5 * (w - expected) + 0.1 * np.sqrt(2) * w / np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out["fc"]["kernel"]), grad, rtol=1e-13)
