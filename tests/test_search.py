"""Architecture search (sparsejax.search): mixed ops, genotypes, DARTS and RARTS steps, the
solvable quadratic model, the evaluation network and the search loop end to end.

Networks here are tiny (1-3 cells, 1-2 nodes, 4 channels, 8x8 inputs) so that the file runs in
well under a minute on two CPU cores; float64 checks run under ``jax.enable_x64``.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import search
from sparsejax.models import darts as darts_lib
from sparsejax.models import get_model
from sparsejax.search import algorithms, toy
from sparsejax.search.space import MixedOp, SearchNetwork

PRIMS = darts_lib.PRIMITIVES


def _x(shape, seed=0, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _pool_np(x, kind, stride):
  """3x3 pooling with padding 1 in numpy; the average ignores padded pixels."""
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  out = np.zeros((n, ho, wo, c))
  for i in range(ho):
    for j in range(wo):
      r0, c0 = i * stride - 1, j * stride - 1
      win = x[:, max(r0, 0):r0 + 3, max(c0, 0):c0 + 3, :]
      out[:, i, j] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
  return out


def _bn_np(x):
  x = np.asarray(x, np.float64)
  return (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5)


# --------------------------------------------------------------------------- mixed ops


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_is_softmax_weighted_sum_of_ops(stride):
  op = MixedOp(4, stride, rngs=nnx.Rngs(0))
  x = _x((3, 8, 8, 4))
  alpha = _x((len(PRIMS),), seed=1)
  w = np.asarray(jax.nn.softmax(alpha), np.float64)
  got = np.asarray(op(x, jax.nn.softmax(alpha)), np.float64)
  # Each op on its own; pooling, skip and none against numpy references.
  outs = [np.asarray(o(x), np.float64) for o in op.ops]
  ref = dict(zip(PRIMS, outs))
  np.testing.assert_array_equal(ref["none"], 0.0)
  np.testing.assert_allclose(ref["max_pool_3x3"], _bn_np(_pool_np(x, "max", stride)),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ref["avg_pool_3x3"], _bn_np(_pool_np(x, "avg", stride)),
                             rtol=1e-4, atol=1e-4)
  if stride == 1:
    np.testing.assert_array_equal(ref["skip_connect"], np.asarray(x))
  assert all(o.shape == (3, 8 // stride, 8 // stride, 4) for o in outs)
  expected = sum(wk * ok for wk, ok in zip(w, outs))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # One-hot weights select one op exactly.
  for k in (3, 4):
    np.testing.assert_allclose(op(x, jnp.eye(len(PRIMS))[k]), outs[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 1, 2), (5, 2, 2)])
def test_depthwise_conv_matches_grouped_conv(k, stride, dilation):
  conv = darts_lib.DepthwiseConv(6, k, stride=stride, padding=dilation * (k - 1) // 2,
                                 dilation=dilation, rngs=nnx.Rngs(0))
  x = _x((2, 8, 8, 6))
  p = dilation * (k - 1) // 2
  ref = jax.lax.conv_general_dilated(
      x, conv.kernel[...], (stride, stride), ((p, p), (p, p)), rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6)
  np.testing.assert_allclose(conv(x), ref, rtol=1e-5, atol=1e-5)


def test_search_network_shapes_and_alphas():
  make = lambda: SearchNetwork(  # noqa: E731
      num_cells=3, channels=4, steps=2, multiplier=2,
      primitives=("none", "skip_connect", "avg_pool_3x3"), rngs=nnx.Rngs(0))
  net = nnx.eval_shape(make)
  assert net.reduction == (False, True, True)  # cells 3 // 3 = 1 and 2 * 3 // 3 = 2
  assert net.alpha_shape == (5, 3) and search.num_edges(4) == 14
  n_edges = sum(len(cell.edges) for cell in net.cells)
  assert n_edges == 3 * 5 and all(len(e.ops) == 3 for cell in net.cells for e in cell.edges)
  alphas = net.init_alphas(jax.random.key(0))
  assert alphas["normal"].shape == (5, 3) and float(jnp.abs(alphas["normal"]).max()) < 1e-2
  x = jnp.zeros((2, 8, 8, 3))
  assert jax.eval_shape(lambda: make()(x, alphas)).shape == (2, 10)
  with pytest.raises(ValueError, match=r"alphas\['reduce'\] must have shape \(5, 3\)"):
    jax.eval_shape(lambda: make()(x, {"normal": alphas["normal"], "reduce": jnp.zeros((14, 3))}))


# --------------------------------------------------------------------------- genotypes


def _hand_alpha():
  a = np.zeros((14, len(PRIMS)))
  ix = {p: k for k, p in enumerate(PRIMS)}
  # node 0: edges 0 (<-0), 1 (<-1); edge 1 is dominated by `none`, which does not count.
  a[0, ix["sep_conv_3x3"]] = 2.0
  a[1, ix["none"]], a[1, ix["skip_connect"]] = 5.0, 1.0
  # node 1: edges 2, 3, 4 (<- 0, 1, 2)
  a[2, ix["max_pool_3x3"]] = 1.0
  a[3, ix["dil_conv_5x5"]] = 3.0
  a[4, ix["avg_pool_3x3"]] = 2.0
  # node 2: edges 5..8 (<- 0..3); edge 5's large sep_conv_5x5 logit loses to its `none`.
  a[5, ix["none"]], a[5, ix["sep_conv_5x5"]] = 10.0, 4.0
  a[6, ix["skip_connect"]] = 0.5
  a[7, ix["dil_conv_3x3"]] = 2.5
  a[8, ix["sep_conv_3x3"]] = 1.5
  # node 3: edges 9..13 (<- 0..4); edges 10-12 are uniform (all ops tie).
  a[9, ix["avg_pool_3x3"]] = 2.0
  a[13, ix["max_pool_3x3"]] = 3.0
  return a


def test_derive_genotype_on_hand_set_alphas():
  g = search.derive_genotype({"normal": _hand_alpha(), "reduce": np.zeros((14, len(PRIMS)))})
  assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1),
                      ("dil_conv_5x5", 1), ("avg_pool_3x3", 2),
                      ("dil_conv_3x3", 2), ("sep_conv_3x3", 3),
                      ("max_pool_3x3", 4), ("avg_pool_3x3", 0))
  # All ties: lowest edges, first op that is not `none`.
  assert g.reduce == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4
  assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
  # A smaller space: 2 nodes, 3 ops, output of the last node only.
  a = np.array([[0, 1, 0], [0, 0, 2], [9, 0, 1], [0, 3, 0], [0, 0, 0.5]], float)
  g2 = search.derive_genotype({"normal": a, "reduce": a}, ("none", "skip_connect", "avg_pool_3x3"),
                              multiplier=1)
  assert g2.normal == (("avg_pool_3x3", 1), ("skip_connect", 0),
                       ("skip_connect", 1), ("avg_pool_3x3", 2))
  assert g2.normal_concat == (3,)


def test_genotype_json_round_trip(tmp_path):
  path = search.save_genotype(search.DARTS_V2, tmp_path / "g.json")
  assert search.load_genotype(path) == search.DARTS_V2
  assert search.parse_genotype(darts_lib.genotype_to_json(search.DARTS_V2)) == search.DARTS_V2
  with open(path) as f:
    assert json.load(f)["normal"][0] == ["sep_conv_3x3", 0]


# --------------------------------------------------------------------------- evaluation network


def _expected_eval_params(g, num_cells, widths, stem_mult=3, in_ch=3, classes=10):
  def op_params(name, c, stride):
    if name == "skip_connect":
      return 0 if stride == 1 else c * c + 2 * c  # FactorizedReduce(c, c)
    if name.startswith("sep_conv"):
      k = int(name[-1])
      return 2 * (k * k * c + c * c + 2 * c)
    if name.startswith("dil_conv"):
      k = int(name[-1])
      return k * k * c + c * c + 2 * c
    return 0  # pools, none
  stem = stem_mult * widths[0]
  total = 9 * in_ch * stem + 2 * stem
  reductions = darts_lib.reduction_cells(num_cells)
  pp, p, stage = stem, stem, 0
  for i in range(num_cells):
    red = i in reductions
    stage += red
    c = widths[stage]
    edges, concat = (g.reduce, g.reduce_concat) if red else (g.normal, g.normal_concat)
    total += pp * c + 2 * c + p * c + 2 * c  # pre0 (1x1 or factorized), pre1
    total += sum(op_params(name, c, 2 if red and j < 2 else 1) for name, j in edges)
    pp, p = p, len(concat) * c
  return total + p * classes + classes


def _np_pool3(x, kind):
  """3x3 stride-1 pooling with padding 1 (the average over the in-image entries only)."""
  n, h, w, c = x.shape
  fill = -np.inf if kind == "max" else 0.0
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
  ones = np.pad(np.ones((h, w)), 1)
  out = np.zeros_like(x)
  for i in range(h):
    for j in range(w):
      win = xp[:, i:i + 3, j:j + 3]
      out[:, i, j] = win.max(axis=(1, 2)) if kind == "max" else (
          win.sum(axis=(1, 2)) / ones[i:i + 3, j:j + 3].sum())
  return out


def test_eval_cell_wires_edges_as_the_genotype_says():
  # node 2 = skip(s1) + avg(s0); node 3 = max(node 2) + skip(s0); output concat(node 2, node 3).
  edges = [("skip_connect", 1), ("avg_pool_3x3", 0), ("max_pool_3x3", 2), ("skip_connect", 0)]
  cell = darts_lib.DartsEvalCell(edges, (2, 3), prev_prev_features=3, prev_features=5,
                                 features=4, reduction=False, reduce_input=False,
                                 norm=lambda c, rngs: nnx.BatchNorm(c, rngs=rngs),
                                 rngs=nnx.Rngs(0))
  cell.eval()
  r = np.random.default_rng(3)
  s0 = jnp.asarray(r.normal(size=(2, 5, 6, 3)), jnp.float32)
  s1 = jnp.asarray(r.normal(size=(2, 5, 6, 5)), jnp.float32)
  h0, h1 = np.asarray(cell.pre0(s0), np.float64), np.asarray(cell.pre1(s1), np.float64)
  n2 = h1 + _np_pool3(h0, "avg")
  n3 = _np_pool3(n2, "max") + h0
  np.testing.assert_allclose(np.asarray(cell(s0, s1)), np.concatenate([n2, n3], axis=-1),
                             rtol=1e-5, atol=1e-5)


def test_search_cell_sums_every_edge_in_the_documented_order():
  # steps=2: edges (j -> node) are e0 (s0 -> n0), e1 (s1 -> n0), e2 (s0 -> n1), e3 (s1 -> n1),
  # e4 (n0 -> n1); mixing "none", "skip_connect" and "avg_pool_3x3" (+ its batch-stat norm).
  cell = search.SearchCell(steps=2, multiplier=2, prev_prev_features=3, prev_features=5,
                           features=4, reduction=False, reduce_input=False,
                           primitives=("none", "skip_connect", "avg_pool_3x3"),
                           rngs=nnx.Rngs(0))
  r = np.random.default_rng(4)
  s0 = jnp.asarray(r.normal(size=(2, 5, 6, 3)), jnp.float32)
  s1 = jnp.asarray(r.normal(size=(2, 5, 6, 5)), jnp.float32)
  w = jnp.asarray(r.uniform(0.1, 1.0, size=(5, 3)), jnp.float32)  # distinct per edge

  def mixed(e, h):
    pool_norm = cell.edges[e].ops[2]  # the op modules themselves; the wiring is under test
    return w[e, 1] * h + w[e, 2] * pool_norm(h)

  h0, h1 = cell.pre0(s0), cell.pre1(s1)
  n0 = mixed(0, h0) + mixed(1, h1)
  n1 = mixed(2, h0) + mixed(3, h1) + mixed(4, n0)
  np.testing.assert_allclose(np.asarray(cell(s0, s1, w)), np.concatenate([n0, n1], axis=-1),
                             rtol=1e-5, atol=1e-5)


def test_eval_network_from_genotype(tmp_path):
  g = search.DARTS_V2
  path = search.save_genotype(g, tmp_path / "g.json")
  net = nnx.eval_shape(lambda: get_model("darts_eval", genotype=str(path), num_cells=3,
                                         widths=(4, 8, 16), rngs=nnx.Rngs(0)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
  assert n == _expected_eval_params(g, 3, (4, 8, 16))
  assert net.genotype == g
  # Ops follow the genotype: cell 1 is a reduction cell (stride 2 on edges from inputs).
  normal_types = [type(o).__name__ for o in net.cells[0].ops]
  assert normal_types == ["SepConv"] * 5 + ["Identity", "Identity", "DilConv"]
  reduce_types = [type(o).__name__ for o in net.cells[1].ops]
  assert reduce_types == ["Pool", "Pool", "Identity", "Pool", "Pool", "Identity", "Identity",
                          "Pool"]
  assert [o.stride for o in net.cells[1].ops if isinstance(o, darts_lib.Pool)] == [2] * 5
  assert net.cells[1].ops[0].kind == "max"
  out = jax.eval_shape(lambda: get_model("darts_eval", genotype=g, num_cells=3, widths=(4, 8, 16),
                                         rngs=nnx.Rngs(0))(jnp.zeros((2, 8, 8, 3))))
  assert out.shape == (2, 10)
  # The DARTS (2nd order) network of the paper: 20 cells of 36/72/144 channels, "3.3M"
  # parameters with the auxiliary head we do not build.
  assert 3.2e6 < _expected_eval_params(g, 20, (36, 72, 144)) < 3.4e6


# --------------------------------------------------------------------------- DARTS hypergradient


def test_second_order_hypergradient_matches_finite_differences():
  """Both hypergradient modes against central differences of L_val(w - xi grad L_train, alpha)."""
  with jax.enable_x64(True):
    prims = ("none", "avg_pool_3x3", "skip_connect", "dil_conv_3x3")
    net = nnx.eval_shape(lambda: SearchNetwork(  # one (reduction) cell: 2 edges
        num_cells=1, channels=4, steps=1, multiplier=1, primitives=prims, rngs=nnx.Rngs(0)))
    graphdef, weights, rest = nnx.split(net, nnx.Param, ...)
    r = np.random.default_rng(0)
    weights = jax.tree.map(lambda v: jnp.asarray(r.normal(size=v.shape) * 0.5, jnp.float64),
                           nnx.as_pure(weights))
    rest = nnx.as_pure(rest)
    loss_fn = search.run.make_loss_fn(graphdef, rest)
    batch = lambda s: {"image": _x((8, 8, 8, 3), s, jnp.float64),  # noqa: E731
                       "label": jnp.asarray(np.random.default_rng(s).integers(0, 10, 8))}
    train_b, val_b = batch(1), batch(2)
    alphas = {k: _x((2, 4), 3 + i, jnp.float64) for i, k in enumerate(search.CELL_TYPES)}
    xi = 0.05

    @jax.jit
    def unrolled_val(a):
      g = jax.grad(lambda w: loss_fn(w, a, train_b)[0])(weights)
      w1 = jax.tree.map(lambda w, gw: w - xi * gw, weights, g)
      return loss_fn(w1, a, val_b)[0]

    flat, unravel = jax.flatten_util.ravel_pytree(alphas)
    h = 1e-5
    fd = np.array([(unrolled_val(unravel(flat.at[i].add(h))) -
                    unrolled_val(unravel(flat.at[i].add(-h)))) / (2 * h)
                   for i in range(flat.size)])
    hyper = jax.jit(algorithms.darts_hypergradient, static_argnames=("loss_fn", "hessian"))
    exact, _ = hyper(loss_fn, weights, alphas, train_b, val_b, xi, hessian="exact")
    approx, (val_loss, _) = hyper(loss_fn, weights, alphas, train_b, val_b, xi,
                                  hessian="finite_difference")
    exact, approx = jax.flatten_util.ravel_pytree(exact)[0], jax.flatten_util.ravel_pytree(approx)[0]
    scale = np.abs(fd).max()
    assert scale > 1e-3  # the architecture matters
    np.testing.assert_allclose(exact, fd, atol=1e-7 * scale)
    # DARTS's central difference (eps = 0.01 / |v|) has an O(eps^2) error.
    np.testing.assert_allclose(approx, fd, atol=1e-3 * scale)
    np.testing.assert_allclose(val_loss, unrolled_val(alphas), rtol=1e-12)


# --------------------------------------------------------------------------- steps by hand


def test_rarts_and_darts_steps_match_hand_written_updates():
  """One step with plain SGD against the formulas of ALGORITHMS.md section 4, in numpy."""
  prob = toy.random_problem(1, n=3, m=2)
  A, C, d, e = (np.asarray(v, np.float64) for v in prob[:4])
  mu = prob.mu
  gw_train = lambda w, a: A @ (w - C @ a)  # noqa: E731
  ga_train = lambda w, a: -C.T @ A @ (w - C @ a)  # noqa: E731
  gy_val = lambda y: y - d  # noqa: E731
  ga_val = lambda a: mu * (a - e)  # noqa: E731
  w0, y0, a0 = np.array([0.3, -0.2, 0.5]), np.array([0.1, 0.4, -0.3]), np.array([0.2, -0.1])
  ew, ey, ea, lam, beta = 0.1, 0.2, 0.05, 0.7, 1.3
  with jax.enable_x64(True):
    for mode in search.ALPHA_UPDATES:
      step = algorithms.rarts_step(prob.train_loss, optax.sgd(ew), optax.sgd(ea), lam=lam,
                                   beta=beta, val_weights_tx=optax.sgd(ey), alpha_update=mode,
                                   val_loss_fn=prob.val_loss)
      state = algorithms.init_rarts(jnp.asarray(w0), jnp.asarray(a0), optax.sgd(ew),
                                    optax.sgd(ea), optax.sgd(ey))
      state = state._replace(val_weights=jnp.asarray(y0))
      new, m = jax.jit(step)(state, None, None)
      w1 = w0 - ew * (lam * gw_train(w0, a0) + beta * (w0 - y0))
      y1 = y0 - ey * (gy_val(y0) + beta * (y0 - w1))
      w_a = w1 if mode == "gauss_seidel" else w0  # ga_val does not depend on y here
      a1 = a0 - ea * (ga_val(a0) + lam * ga_train(w_a, a0))
      assert not np.allclose(ga_train(w1, a0), ga_train(w0, a0))  # the modes differ here
      np.testing.assert_allclose(new.weights, w1, rtol=1e-12)
      np.testing.assert_allclose(new.val_weights, y1, rtol=1e-12)
      np.testing.assert_allclose(new.alphas, a1, rtol=1e-12)
      np.testing.assert_allclose(m["coupling"], np.sum((y1 - w1) ** 2), rtol=1e-12)
    # DARTS first order: alpha on the validation gradient at w, then w at the new alpha.
    step = algorithms.darts_step(prob.train_loss, optax.sgd(ew), optax.sgd(ea),
                                 val_loss_fn=prob.val_loss)
    new, _ = jax.jit(step)(algorithms.init_darts(jnp.asarray(w0), jnp.asarray(a0),
                                                 optax.sgd(ew), optax.sgd(ea)), None, None)
    a1 = a0 - ea * ga_val(a0)
    np.testing.assert_allclose(new.alphas, a1, rtol=1e-12)
    np.testing.assert_allclose(new.weights, w0 - ew * gw_train(w0, a1), rtol=1e-12)


def _mlp_problem():
  """A small nonlinear model with tree-shaped weights and alphas, for step-level checks."""
  r = np.random.default_rng(0)
  weights = {"a": jnp.asarray(r.normal(size=(5, 4)), jnp.float32),
             "b": {"k": jnp.asarray(r.normal(size=(3, 4, 2)), jnp.float32)}}
  alphas = {"normal": jnp.asarray(r.normal(size=(3,)) * 0.1, jnp.float32),
            "reduce": jnp.asarray(r.normal(size=(2,)) * 0.1, jnp.float32)}

  def loss_fn(w, a, batch):
    h = jnp.tanh(batch["x"] @ w["a"])
    feats = jnp.einsum("nh,khj->nkj", h, w["b"]["k"])  # 3 candidate heads
    mix = jnp.einsum("k,nkj->nj", jax.nn.softmax(a["normal"]), feats)
    out = mix * jax.nn.softmax(a["reduce"])[0] + jnp.sin(mix) * jax.nn.softmax(a["reduce"])[1]
    return jnp.mean((out - batch["y"]) ** 2), {"n": batch["x"].shape[0]}

  batches = [{"x": jnp.asarray(r.normal(size=(8, 5)), jnp.float32),
              "y": jnp.asarray(r.normal(size=(8, 2)), jnp.float32)} for _ in range(6)]
  return weights, alphas, loss_fn, batches


@pytest.mark.parametrize("method", ["darts-1", "darts-2", "rarts", "rarts-jacobi"])
def test_precompiled_pass_matches_jitted_step(method):
  """compile="pass" (one jitted gradient pass, eager step) equals jit of the whole step."""
  weights, alphas, loss_fn, batches = _mlp_problem()
  w_tx = optax.chain(optax.clip_by_global_norm(5.0), optax.add_decayed_weights(3e-4),
                     optax.sgd(0.1, momentum=0.9))
  a_tx = optax.chain(optax.add_decayed_weights(1e-3), optax.adam(3e-2, b1=0.5))

  def build(grads_fn):
    if method.startswith("darts"):
      return (algorithms.darts_step(loss_fn, w_tx, a_tx, order=int(method[-1]), xi=0.1,
                                    grads_fn=grads_fn),
              algorithms.init_darts(weights, alphas, w_tx, a_tx))
    return (algorithms.rarts_step(loss_fn, w_tx, a_tx, lam=0.5, beta=2.0, grads_fn=grads_fn,
                                  alpha_update="jacobi" if "jacobi" in method else "gauss_seidel"),
            algorithms.init_rarts(weights, alphas, w_tx, a_tx))

  calls = []
  compiled = jax.jit(algorithms.loss_and_grads(loss_fn))

  def counted(*args):
    calls.append(1)
    return compiled(*args)

  outs = []
  for grads_fn, wrap in ((None, jax.jit), (counted, lambda f: f)):
    step, state = build(grads_fn)
    step = wrap(step)
    for k in range(3):
      state, _ = step(state, batches[2 * k], batches[2 * k + 1])
    outs.append(state)
  passes = {"darts-1": 2, "darts-2": 5, "rarts": 4, "rarts-jacobi": 2}[method]
  assert len(calls) == 3 * passes
  for x, y in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  assert not np.allclose(outs[0].alphas["normal"], alphas["normal"])


# --------------------------------------------------------------------------- the solvable model


def _iterate(step, state, n):
  return jax.jit(lambda s: jax.lax.scan(lambda c, _: (step(c, None, None)[0], None), s, None,
                                        length=n)[0])(state)


def _rarts(prob, lam, beta, lr, n, mode="gauss_seidel"):
  tx = optax.sgd(lr)
  nw, na = prob.C.shape
  state = algorithms.init_rarts(jnp.zeros(nw), jnp.zeros(na), tx, tx)
  step = algorithms.rarts_step(prob.train_loss, tx, tx, lam=lam, beta=beta,
                               alpha_update=mode, val_loss_fn=prob.val_loss)
  return _iterate(step, state, n)


def _darts(prob, order, lr, n, xi=0.1, alpha0=None):
  tx = optax.sgd(lr)
  nw, na = prob.C.shape
  a0 = jnp.zeros(na) if alpha0 is None else jnp.asarray(alpha0)
  state = algorithms.init_darts(jnp.zeros(nw), a0, tx, tx)
  step = algorithms.darts_step(prob.train_loss, tx, tx, order=order, xi=xi,
                               val_loss_fn=prob.val_loss)
  return _iterate(step, state, n)


def test_rarts_fixed_point_is_the_bilevel_optimum_on_the_solvable_model():
  """Realizable case (mu = 0, square invertible C): alpha* = C^-1 d for any lam, beta > 0."""
  with jax.enable_x64(True):
    prob = toy.realizable_problem(0, n=3)
    opt = prob.optimum()
    np.testing.assert_allclose(prob.C @ opt, prob.d, rtol=1e-12)  # validation loss 0
    for lam, beta in ((1.0, 1.0), (0.5, 3.0)):
      np.testing.assert_allclose(prob.rarts_fixed_point(lam, beta), opt, rtol=1e-10)
      for mode in search.ALPHA_UPDATES:
        state = _rarts(prob, lam, beta, lr=0.2, n=6000, mode=mode)
        np.testing.assert_allclose(state.alphas, opt, atol=1e-10)
        np.testing.assert_allclose(state.weights, prob.d, atol=1e-10)
        np.testing.assert_allclose(state.val_weights, prob.d, atol=1e-10)
    # Second-order DARTS gets there too; first order has no architecture gradient and stays put.
    np.testing.assert_allclose(_darts(prob, 2, lr=0.2, n=6000).alphas, opt, atol=1e-10)
    a0 = np.array([0.3, -0.2, 0.1])
    np.testing.assert_allclose(_darts(prob, 1, lr=0.2, n=500, alpha0=a0).alphas, a0, rtol=0)
    assert np.abs(a0 - opt).max() > 0.1


def test_solvable_model_general_case_closed_forms():
  """mu > 0: each method converges to its closed-form fixed point; RARTS -> alpha* as lam, beta grow."""
  with jax.enable_x64(True):
    prob = toy.random_problem(0, n=3, m=2, mu=0.5)
    opt = prob.optimum()
    errors = []
    for lam_beta, lr, n in ((1.0, 0.2, 6000), (10.0, 0.05, 12000), (100.0, 0.006, 60000)):
      fixed = prob.rarts_fixed_point(lam_beta, lam_beta)
      state = _rarts(prob, lam_beta, lam_beta, lr=lr, n=n)
      np.testing.assert_allclose(state.alphas, fixed, atol=1e-9)
      errors.append(np.abs(fixed - opt).max())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02 * errors[0]  # O(1 / lam)
    np.testing.assert_allclose(_darts(prob, 1, lr=0.2, n=6000).alphas,
                               prob.darts_first_order_fixed_point(), atol=1e-9)
    d2 = _darts(prob, 2, lr=0.2, n=6000, xi=0.1).alphas
    np.testing.assert_allclose(d2, prob.darts_second_order_fixed_point(0.1), atol=1e-9)
    assert np.abs(d2 - opt).max() > 0.05  # biased unless xi * A = I
    unit = prob._replace(A=np.eye(3))  # A = I: xi = 1 solves the inner problem in one step
    np.testing.assert_allclose(unit.darts_second_order_fixed_point(1.0), unit.optimum(),
                               rtol=1e-12)


# --------------------------------------------------------------------------- search loop


def _synthetic_cifar(tmp_path, n=64):
  r = np.random.default_rng(0)
  np.savez(tmp_path / "cifar10.npz", x_train=r.integers(0, 255, (n, 32, 32, 3)).astype(np.uint8),
           y_train=r.integers(0, 10, n).astype(np.uint8),
           x_test=r.integers(0, 255, (16, 32, 32, 3)).astype(np.uint8),
           y_test=r.integers(0, 10, 16).astype(np.uint8))
  return str(tmp_path)


def _tiny_search_config(data_dir, method="rarts"):
  from configs import darts_cifar10, rarts_cifar10  # pylint: disable=import-outside-toplevel
  c = (rarts_cifar10 if method == "rarts" else darts_cifar10).get_config("smoke")
  c.data.dir = data_dir
  c.data.train_subset = None
  c.model.num_cells = 3
  c.model.steps = 1
  c.model.multiplier = 1
  c.model.primitives = ("none", "max_pool_3x3", "skip_connect")
  c.batch_size = 8
  c.num_epochs = 2
  c.max_steps_per_epoch = 2
  c.arch_optimizer.lr = 0.05  # so that two epochs move alpha visibly
  return c


def test_run_search_end_to_end_and_train_the_genotype(tmp_path):
  from configs import genotype_cifar10  # pylint: disable=import-outside-toplevel
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  data_dir = _synthetic_cifar(tmp_path)
  c = _tiny_search_config(data_dir)
  work = tmp_path / "search"
  report = search.run_search(c, str(work))
  assert report["train_examples"] == report["val_examples"] == 32  # the half split
  assert report["epochs"] == 2 and report["steps_per_epoch"] == 2
  assert report["step_peak_bytes"] > report["state_bytes"] > 0
  # y's optimizer as used: config.val_optimizer's None fields filled from config.optimizer.
  assert report["val_optimizer"] == c.optimizer.to_dict()
  lines = [json.loads(l) for l in open(work / "metrics.jsonl")]
  assert [l["epoch"] for l in lines] == [1, 2]
  assert all(np.isfinite(l["train_loss"]) and 0 <= l["val_accuracy"] <= 1 and "coupling" in l
             for l in lines)
  hist = np.load(work / "alphas.npz")
  assert hist["normal"].shape == hist["reduce"].shape == (3, 2, 3)
  assert list(hist["primitives"]) == ["none", "max_pool_3x3", "skip_connect"]
  assert np.abs(hist["normal"][-1] - hist["normal"][0]).max() > 1e-2  # alpha moved
  saved = search.load_genotype(work / "genotype.json")
  assert saved == search.derive_genotype(
      {"normal": hist["normal"][-1], "reduce": hist["reduce"][-1]}, tuple(hist["primitives"]),
      multiplier=1)
  assert report["genotype_str"] == search.genotype_str(saved) == lines[-1]["genotype"]
  with open(work / "alphas.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # The genotype config trains the evaluation network of the saved genotype.
  t = genotype_cifar10.get_config("smoke")
  t.data.dir = data_dir
  t.data.train_subset = None
  t.data.test_subset = None
  t.model.kwargs.genotype = str(work / "genotype.json")
  t.model.kwargs.num_cells = 1
  t.batch_size = 16
  t.num_epochs = 1.0
  r = train.train_and_evaluate(t, str(tmp_path / "eval"))
  # The trained network is the saved genotype's (the default DARTS_V2 cell would have
  # separable convs), counted independently of the model code.
  assert sum(l["params"] for l in r["layers"]) == _expected_eval_params(
      saved, 1, tuple(t.model.kwargs.widths))
  with open(tmp_path / "eval" / "report.json") as f:
    assert json.load(f)["test_accuracy"] == r["test_accuracy"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("edit,match", [
    (lambda c: setattr(c.search, "method", "enas"),
     r"config.search.method must be one of \('darts', 'rarts'\), got 'enas'"),
    (lambda c: setattr(c, "compile", "xla"),
     r"config.compile must be one of \('step', 'pass'\), got 'xla'"),
    (lambda c: setattr(c.search, "alpha_update", "jacobian"),
     r"config.search.alpha_update must be one of \('gauss_seidel', 'jacobi'\), got 'jacobian'"),
    (lambda c: setattr(c.search, "beta", -1.0), r"config.search.beta must be a finite number >= 0, "
     r"got -1.0"),
    (lambda c: setattr(c.model, "primitives", ("none", "conv_7x7")),
     r"primitives\[1\] = 'conv_7x7' is not a known op; allowed: \('none', 'max_pool_3x3'"),
    (lambda c: setattr(c.data, "train_fraction", 1.0),
     r"config.data.train_fraction must lie in \(0, 1\), got 1.0"),
    (lambda c: setattr(c.model, "multiplier", 5),
     r"config.model.multiplier must be <= config.model.steps=4, got 5"),
    (lambda c: setattr(c.val_optimizer, "lr", 0.0),
     r"config.val_optimizer.lr must be a finite number > 0, got 0.0"),
    (lambda c: setattr(c.optimizer, "momentum", -0.9),
     r"config.optimizer.momentum must be a finite number >= 0, got -0.9"),
    (lambda c: setattr(c.arch_optimizer, "b1", 1.5),
     r"config.arch_optimizer.b1 must lie in \[0, 1\), got 1.5"),
    (lambda c: setattr(c.data, "train_subset", 0),
     r"config.data.train_subset must be a positive int, got 0"),
    (lambda c: setattr(c.search, "alpha_init_scale", float("nan")),
     r"config.search.alpha_init_scale must be a finite number >= 0, got nan"),
    (lambda c: setattr(c, "seed", -3), r"config.seed must be an integer >= 0, got -3"),
    # Momentum 1 never forgets a gradient (and more diverges): both were accepted.
    (lambda c: setattr(c.optimizer, "momentum", 1.0),
     r"config.optimizer.momentum must lie in \[0, 1\), got 1.0"),
    (lambda c: setattr(c.val_optimizer, "momentum", 1.5),
     r"config.val_optimizer.momentum must lie in \[0, 1\), got 1.5"),
])
def test_validate_config_errors(edit, match):
  from configs import rarts_cifar10  # pylint: disable=import-outside-toplevel
  c = rarts_cifar10.get_config()
  edit(c)
  with pytest.raises(ValueError, match=match):
    search.validate_config(c)


def test_rarts_val_optimizer_follows_overrides_of_the_weights_optimizer():
  # y's optimizer was a copy of config.optimizer frozen when the config was built, so
  # --config.optimizer.lr=0.1 trained w at 0.1 and y, silently, at the default 0.025.
  from configs import rarts_cifar10  # pylint: disable=import-outside-toplevel
  c = rarts_cifar10.get_config()
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.5
  v = search.run.val_optimizer_config(c)
  assert v.to_dict() == c.optimizer.to_dict() and v.lr == 0.1 and v.momentum == 0.5
  c.val_optimizer.lr = 0.01  # a field set on val_optimizer differs, the rest still follows
  v = search.run.val_optimizer_config(c)
  assert (v.lr, v.momentum, c.optimizer.lr) == (0.01, 0.5, 0.1)
  search.validate_config(c)
  from configs import darts_cifar10  # pylint: disable=import-outside-toplevel
  assert search.run.val_optimizer_config(darts_cifar10.get_config()) is None


def test_diverged_search_raises_instead_of_deriving_a_genotype(tmp_path):
  # NaN logits make argmax pick the first column: a "genotype" of max-pools on every edge
  # would be written without complaint.
  with pytest.raises(ValueError, match=r"alpha must be finite .* got 3 non-finite logits"):
    search.derive_cell(np.where(np.isin(np.arange(14), (0, 3, 5))[:, None] & (np.arange(8) == 2),
                                np.nan, 0.0))
  c = _tiny_search_config(_synthetic_cifar(tmp_path))
  c.num_epochs = 1
  c.model.num_cells = 1
  c.optimizer.lr = 1e30
  c.val_optimizer.lr = 1e30
  with pytest.raises(FloatingPointError, match=r"the search diverged in epoch 1: .*train_loss"):
    search.run_search(c, str(tmp_path / "search"))
  assert not (tmp_path / "search" / "genotype.json").exists()


def test_argument_errors():
  from configs import darts_cifar10, default, rarts_cifar10  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=r"no config.search section: it is a training config, run "
                                       r"it with scripts/train.py"):
    search.validate_config(default.get_config("smoke"))
  c = darts_cifar10.get_config("second_order,exact")
  c.compile = "pass"
  with pytest.raises(ValueError, match=r"hessian='exact' .* needs config.compile='step'"):
    search.validate_config(c)
  c = darts_cifar10.get_config()
  c.search.order = 3
  with pytest.raises(ValueError, match=r"config.search.order must be one of \(1, 2\), got 3"):
    search.validate_config(c)
  with pytest.raises(ValueError, match=r"unknown variant\(s\) \['gpu'\].*allowed: jacobi, cpu"):
    rarts_cifar10.get_config("gpu")
  loss = toy.random_problem().train_loss
  with pytest.raises(ValueError, match=r"order must be 1 or 2, got order=3"):
    algorithms.darts_step(loss, optax.sgd(1.0), optax.sgd(1.0), order=3)
  with pytest.raises(ValueError, match=r"hessian must be one of \('finite_difference', 'exact'\), "
                     r"got hessian='fd'"):
    algorithms.darts_step(loss, optax.sgd(1.0), optax.sgd(1.0), order=2, xi=0.1, hessian="fd")
  with pytest.raises(ValueError, match=r"xi must be a number >= 0 .* got xi=None"):
    algorithms.darts_step(loss, optax.sgd(1.0), optax.sgd(1.0), order=2)
  with pytest.raises(ValueError, match=r"lam must be >= 0 \(finite, not NaN\), got -1.0"):
    algorithms.rarts_step(loss, optax.sgd(1.0), optax.sgd(1.0), lam=-1)
  with pytest.raises(ValueError, match=r"beta must be >= 0 \(finite, not NaN\), got inf"):
    algorithms.rarts_step(loss, optax.sgd(1.0), optax.sgd(1.0), beta=float("inf"))
  with pytest.raises(ValueError, match=r"alpha_update must be one of \('gauss_seidel', 'jacobi'\), "
                     r"got alpha_update='sweep'"):
    algorithms.rarts_step(loss, optax.sgd(1.0), optax.sgd(1.0), alpha_update="sweep")
  with pytest.raises(ValueError, match=r"genotype.normal\[0\] names op 'conv'; allowed: \('none'"):
    search.parse_genotype({"normal": [["conv", 0], ["skip_connect", 1]], "normal_concat": [2],
                           "reduce": [["skip_connect", 0], ["skip_connect", 1]],
                           "reduce_concat": [2]})
  with pytest.raises(ValueError, match=r"genotype.reduce\[3\] feeds intermediate node 1, so its "
                     r"input must be an int in \[0, 3\).*got 3"):
    search.parse_genotype({"normal": [["skip_connect", 0], ["skip_connect", 1]] * 2,
                           "normal_concat": [2], "reduce_concat": [2],
                           "reduce": [["skip_connect", 0], ["skip_connect", 1],
                                      ["skip_connect", 2], ["skip_connect", 3]]})
  # A reduction cell's inputs are at twice its nodes' resolution: the forward pass failed
  # with a bare concatenate shape error.
  with pytest.raises(ValueError, match=r"genotype.reduce_concat\[0\] must be an int in \[2, "
                     r"6\) \(a reduction cell's inputs 0 and 1 keep the input resolution\)"):
    search.parse_genotype(dict(search.DARTS_V2._asdict(), reduce_concat=(0, 2, 3)))
  search.parse_genotype(dict(search.DARTS_V2._asdict(), normal_concat=(0, 2, 3)))
  with pytest.raises(ValueError, match=r"alpha must have shape \(num_edges, 8\)"):
    search.derive_cell(np.zeros((14, 7)))
  for keep in (0, 3, 2.0):
    with pytest.raises(ValueError, match=rf"keep must be 1 or 2 .*got {keep!r}"):
      search.derive_cell(np.zeros((14, 8)), keep=keep)
  with pytest.raises(ValueError, match=r"alphas have 13 edges, which is no cell's edge count"):
    search.derive_genotype({"normal": np.zeros((13, 8)), "reduce": np.zeros((13, 8))})
  with pytest.raises(ValueError, match=r"multiplier must be <= steps=2, got 3"):
    SearchNetwork(num_cells=1, channels=4, steps=2, multiplier=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"channels must be a positive int, got 0"):
    SearchNetwork(num_cells=1, channels=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"op name must be one of .* got 'sep_conv_7x7'"):
    darts_lib.make_op("sep_conv_7x7", 4, 1, norm=lambda c, r: None, rngs=nnx.Rngs(0))


def test_search_cell_and_mixed_op_reject_bad_multiplier_and_weights():
  prims = ("none", "skip_connect", "avg_pool_3x3")
  cell = lambda m: search.SearchCell(  # noqa: E731
      steps=2, multiplier=m, prev_prev_features=3, prev_features=5, features=4, reduction=False,
      reduce_input=False, primitives=prims, rngs=nnx.Rngs(0))
  # multiplier 0 concatenated all four states (the two inputs too), 3 an input and two nodes.
  for m in (0, 3):
    with pytest.raises(ValueError, match=rf"multiplier (must be <= steps=2|must be a positive "
                                         rf"int), got {m}"):
      cell(m)
  s0, s1 = _x((2, 6, 6, 3)), _x((2, 6, 6, 5), seed=1)
  # JAX clamps out-of-range indices: edges 3 and 4 silently used row 2 of a (3, 3) weight.
  with pytest.raises(ValueError, match=r"weights must have shape \(5, 3\) \(edges, ops\), "
                                       r"got \(3, 3\)"):
    cell(2)(s0, s1, jnp.ones((3, 3)) / 3)
  op = MixedOp(4, 1, primitives=prims, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"weights must have shape \(3,\) .* got \(2,\)"):
    op(_x((2, 6, 6, 4)), jnp.array([0.2, 0.8]))


def test_darts_hypergradient_checks_fd_epsilon_and_xi():
  # fd_epsilon = 0 divided 0 by 0: a NaN architecture gradient, without an error.
  prob = toy.random_problem(0)
  args = (prob.train_loss, jnp.full(3, 0.3), jnp.zeros(2), None, None)
  for eps in (0.0, float("nan"), -0.01):
    with pytest.raises(ValueError, match=rf"fd_epsilon must be > 0 .*got {eps!r}"):
      algorithms.darts_hypergradient(*args, 0.1, fd_epsilon=eps, val_loss_fn=prob.val_loss)
  for xi in (-0.1, float("inf")):
    with pytest.raises(ValueError, match=rf"xi must be >= 0 .*got {xi!r}"):
      algorithms.darts_hypergradient(*args, xi, val_loss_fn=prob.val_loss)
  g, _ = algorithms.darts_hypergradient(*args, 0.1, val_loss_fn=prob.val_loss)
  assert np.all(np.isfinite(g))


def test_eval_cell_checks_its_edges_and_concat():
  # Python indexing took input -1 (here: cell input 1) and concat -1 (the last node) silently.
  norm = lambda c, rngs: nnx.BatchNorm(c, rngs=rngs)  # noqa: E731
  cell = lambda edges, concat, reduction=False: darts_lib.DartsEvalCell(  # noqa: E731
      edges, concat, prev_prev_features=3, prev_features=3, features=4, reduction=reduction,
      reduce_input=False, norm=norm, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"edges\[1\] feeds intermediate node 0, so its input must "
                                       r"be an int in \[0, 2\).*got -1"):
    cell([("skip_connect", 0), ("skip_connect", -1)], (2,))
  with pytest.raises(ValueError, match=r"concat\[1\] must be an int in \[0, 3\), got -1"):
    cell([("skip_connect", 0), ("skip_connect", 1)], (2, -1))
  with pytest.raises(ValueError, match=r"concat\[0\] must be an int in \[2, 3\) \(a reduction "
                                       r"cell's inputs"):
    cell([("skip_connect", 0), ("skip_connect", 1)], (1, 2), reduction=True)
  assert cell([("skip_connect", 0), ("skip_connect", 1)], [2]).concat == (2,)
