"""Tests for sparsejax.masks against brute-force numpy references."""

from __future__ import annotations

import functools
from fractions import Fraction

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import masks
from sparsejax import optim
from sparsejax import tree as tree_lib


# Module-level jitted entry points, so parametrized cases share compilations.
_GLOBAL_JIT = jax.jit(lambda p, s: masks.magnitude(p, s, distribution="global"))
_UNIFORM_JIT = jax.jit(masks.magnitude)
_N_BY_M_JIT = jax.jit(masks.n_by_m, static_argnames=("n", "m", "axis"))
_BLOCK_JIT = jax.jit(masks.block, static_argnames=("block_shape", "pool"))
_CHANNEL_JIT = jax.jit(masks.channel, static_argnames=("axis", "ord"))


def _is_none(x):
  return x is None


def _k(s: float, n: int) -> int:
  """Reference floor(s * n) with s read as the decimal it was written as."""
  return int(Fraction(str(s)) * n)


def _ref_keep(abs_values: np.ndarray, k: int) -> np.ndarray:
  """Full-sort reference: prune |w| <= (k-th smallest |w|), keep the rest."""
  if k == 0:
    return np.ones(abs_values.shape, bool)
  t = np.sort(abs_values.ravel())[k - 1]
  return abs_values > t


def _random_params(seed: int = 0):
  rng = np.random.default_rng(seed)
  shapes = {
      "conv1": (3, 3, 3, 8), "conv2": (3, 3, 8, 16), "dense": (16, 10),
      "head": (10, 7)}
  params = {}
  for name, shape in shapes.items():
    params[name] = {
        "kernel": jnp.asarray(rng.standard_normal(shape), jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)}
  params["step"] = jnp.asarray(3.0)  # a scalar leaf, never selected
  all_abs = np.concatenate([np.abs(np.asarray(x)).ravel() for x in jax.tree.leaves(params)])
  assert len(np.unique(all_abs)) == all_abs.size  # distinct magnitudes
  return params


def _kernels(params):
  return [(p, np.asarray(x)) for p, x in tree_lib.leaves_with_paths(params)
          if tree_lib.kernels(p, x)]


def _masks_by_path(m):
  return dict(tree_lib.leaves_with_paths(m, is_leaf=_is_none))


# ---------------------------------------------------------------------------
# Counting rule and the threshold kernel.


@pytest.mark.parametrize("n,s,expected", [
    (100, 0.29, 29),   # 0.29 * 100 == 28.999999999999996 in float64
    (10, 0.7, 7),      # 0.7 in float32 is 0.69999999
    (7, 0.5, 3),
    (1000, 0.0, 0),
    (1000, 0.999, 999),
    (3, 0.99, 2),
    (12345, 0.37, 4567),
])
def test_num_to_prune_concrete_and_traced(n, s, expected):
  assert masks.num_to_prune(n, s) == expected
  traced = jax.jit(lambda s: masks.num_to_prune(n, s))(s)
  assert int(traced) == expected
  # A float32 / bf16 sparsity (a schedule's output) counts as the decimal it rounds from.
  assert masks.num_to_prune(n, np.float32(s)) == expected
  assert masks.num_to_prune(n, jnp.float32(s)) == expected
  if s != 0.999:  # bf16 keeps 2-3 digits: bf16(0.999) is 1.0
    assert masks.num_to_prune(n, jnp.bfloat16(s)) == expected


def test_num_to_prune_float32_eager_equals_jit_on_a_sweep():
  """Every two-digit float32 sparsity: eager == the decimal count (integer arithmetic) on
  any size; jit == it below 40,000 entries (where a two-digit s * size that is not an
  integer stays 0.01 below the next one, more than float32's error), at most one more
  below 2**23, and within float32's resolution above."""
  rng = np.random.default_rng(0)
  sizes = np.concatenate([np.arange(1, 21), [97, 100, 101, 1000, 1024, 2**14 - 1],
                          rng.integers(21, 40_000, 8), rng.integers(40_000, 2**23, 5),
                          [15_316_987, 2**24 - 5]])
  s = jnp.asarray(np.arange(100) / 100, jnp.float32)
  for n in sizes:
    n = int(n)
    exact = np.arange(100) * n // 100
    eager = [masks.num_to_prune(n, np.float32(c / 100)) for c in range(100)]
    np.testing.assert_array_equal(eager, exact, err_msg=str(n))
    jitted = np.asarray(jax.jit(jax.vmap(lambda t, n=n: masks.num_to_prune(n, t)))(s))
    if n < 40_000:
      np.testing.assert_array_equal(jitted, exact, err_msg=str(n))
    elif n < 2**23:
      assert np.all((jitted - exact >= 0) & (jitted - exact <= 1)), n
    else:  # float32's resolution: about n * 2**-23 either way
      assert np.all(np.abs(jitted - exact) <= 1 + n * 2.0**-23), n


@pytest.mark.parametrize("n,s", [(100_000_000, 0.5), (2**31 - 1, 0.5), (2_359_296, 0.8),
                                 (102_760_448, 0.75)])
def test_num_to_prune_traced_large_leaves_within_float32_resolution(n, s):
  exact = math.floor(s * n)
  got = int(jax.jit(masks.num_to_prune, static_argnums=0)(n, s))
  assert masks.num_to_prune(n, s) == exact
  assert exact <= got <= exact + math.ceil(n * 2.0**-24), (got, exact)
  if (s * n) % 1 == 0 and s * n < 2**24:
    assert got == exact


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_kth_smallest_abs_every_k_matches_sort_with_extremes(dtype):
  rng = np.random.default_rng(1)
  special = np.array([0.0, -0.0, 1e-45, -1e-40, 3e-39, 1e-30, -1e30, 3e38, -np.inf, np.inf,
                      1.0, -1.0, 1.0, 2.0], np.float32)  # denormals, ties, infinities
  # cast on device: values beyond the dtype's range become inf, tiny ones 0.
  a = jnp.asarray(np.concatenate([special, rng.standard_normal(20).astype(np.float32)]))
  a = a.astype(dtype)
  b = jnp.asarray(rng.standard_normal((3, 5)) * 100, jnp.float32).astype(dtype)
  ref = np.sort(np.concatenate([np.abs(np.asarray(a, np.float32)),
                                np.abs(np.asarray(b, np.float32)).ravel()]))
  fn = jax.jit(masks.kth_smallest_abs)
  got = np.array([float(fn([a, b], k)) for k in range(0, ref.size + 1)])
  assert got[0] == -np.inf
  np.testing.assert_array_equal(got[1:], ref)


# ---------------------------------------------------------------------------
# Magnitude masks.


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_global_matches_full_sort(sparsity):
  params = _random_params(2)
  kern = _kernels(params)
  all_abs = np.concatenate([np.abs(x).ravel() for _, x in kern])
  k = _k(sparsity, all_abs.size)
  t = np.sort(all_abs)[k - 1] if k else -np.inf
  eager = masks.magnitude(params, sparsity, distribution="global")
  traced = _GLOBAL_JIT(params, sparsity)
  for m in (eager, traced):
    by_path = _masks_by_path(m)
    pruned = 0
    for path, x in kern:
      np.testing.assert_array_equal(np.asarray(by_path[path]), np.abs(x) > t)
      pruned += int(np.sum(~np.asarray(by_path[path])))
    assert pruned == k
    assert all(v is None for p, v in by_path.items() if not p.endswith("kernel"))


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.8, 0.99])
def test_uniform_matches_per_leaf_sort_exact_counts(sparsity):
  params = _random_params(3)
  eager = masks.magnitude(params, sparsity)
  traced = _UNIFORM_JIT(params, sparsity)
  for m in (eager, traced):
    by_path = _masks_by_path(m)
    for path, x in _kernels(params):
      k = _k(sparsity, x.size)
      got = np.asarray(by_path[path])
      assert got.dtype == bool and got.shape == x.shape
      np.testing.assert_array_equal(got, _ref_keep(np.abs(x), k))
      assert int(np.sum(~got)) == k
    assert by_path["conv1/bias"] is None and by_path["step"] is None


def test_ties_at_threshold_all_pruned_and_k_zero_prunes_nothing():
  w = {"kernel": jnp.asarray([[0.0, 1.0, -1.0, 1.0, 3.0], [0.0, 2.0, 5.0, -7.0, 6.0]])}
  # k = floor(0.3 * 10) = 3: the 3rd smallest |w| is 1.0, tied with two others.
  m = masks.magnitude(w, 0.3)["kernel"]
  np.testing.assert_array_equal(m, np.abs(np.asarray(w["kernel"])) > 1.0)
  assert int(np.sum(~np.asarray(m))) == 5
  # k = 0 keeps even exact zeros, concrete and traced.
  assert bool(jnp.all(masks.magnitude(w, 0.0)["kernel"]))
  assert bool(jnp.all(jax.jit(masks.magnitude)(w, 0.0)["kernel"]))
  assert bool(jnp.all(jax.jit(
      lambda p, s: masks.magnitude(p, s, distribution="global"))(w, 0.0)["kernel"]))


def test_bf16_leaf_thresholded_in_float32():
  rng = np.random.default_rng(5)
  w = jnp.asarray(rng.standard_normal((16, 24)), jnp.bfloat16)
  m = masks.magnitude({"kernel": w}, 0.6)["kernel"]
  a = np.abs(np.asarray(w, np.float32))
  np.testing.assert_array_equal(m, _ref_keep(a, _k(0.6, a.size)))


def test_magnitude_per_leaf_traced_sparsities():
  params = _random_params(4)
  targets = {"conv1/kernel": 0.2, "conv2/kernel": 0.7, "dense/kernel": 0.0, "head/kernel": 0.5}
  sp = jax.tree_util.tree_map_with_path(
      lambda p, x: targets.get(tree_lib.path_str(p)), params)

  @jax.jit
  def f(p, scale):
    scaled = jax.tree.map(lambda s: s * scale, sp)
    return masks.magnitude_per_leaf(p, scaled)

  by_path = _masks_by_path(f(params, 1.0))
  for path, x in _kernels(params):
    np.testing.assert_array_equal(by_path[path], _ref_keep(np.abs(x), _k(targets[path], x.size)))
  assert by_path["dense/bias"] is None


def _erk_reference(shapes, sparsity):
  """Independent ERK: try making the j highest-raw layers dense, j = 0, 1, ..."""
  sizes = np.array([np.prod(s) for s in shapes], float)
  raw = np.array([np.sum(s) for s in shapes], float) / sizes
  order = np.argsort(-raw, kind="stable")
  target = (1 - sparsity) * sizes.sum()
  for j in range(len(shapes) + 1):
    dense = np.zeros(len(shapes), bool)
    dense[order[:j]] = True
    eps = (target - sizes[dense].sum()) / (raw[~dense] * sizes[~dense]).sum()
    dens = np.where(dense, 1.0, eps * raw)
    if np.all(dens <= 1.0):
      return dens
  raise AssertionError("no valid ERK solution")


def test_erk_closed_form_without_capping():
  # raw = 20/100, 30/200; eps = 0.5 * 300 / (20 + 30) = 3 -> densities 0.6, 0.45.
  np.testing.assert_allclose(masks.erk_densities([(10, 10), (20, 10)], 0.5), [0.6, 0.45])


@pytest.mark.parametrize("sparsity,n_capped", [(0.95, 0), (0.9, 1), (0.7, 2), (0.3, 3)])
def test_erk_against_reference(sparsity, n_capped):
  shapes = [(3, 3, 3, 16), (3, 3, 16, 32), (3, 3, 32, 64), (64, 10)]
  rng = np.random.default_rng(6)
  params = {f"l{i}": {"kernel": jnp.asarray(rng.standard_normal(s), jnp.float32),
                      "bias": jnp.zeros(s[-1])} for i, s in enumerate(shapes)}
  ref = _erk_reference(shapes, sparsity)
  sp = masks.leaf_sparsities(params, sparsity, distribution="erk")
  got = np.array([1.0 - sp[f"l{i}"]["kernel"] for i in range(len(shapes))])
  assert all(sp[f"l{i}"]["bias"] is None for i in range(len(shapes)))
  np.testing.assert_allclose(got, ref, rtol=1e-12)
  sizes = np.array([np.prod(s) for s in shapes])
  np.testing.assert_allclose(np.sum(got * sizes) / sizes.sum(), 1 - sparsity, rtol=1e-12)
  assert int(np.sum(got == 1.0)) == n_capped
  assert np.all(got <= 1.0) and np.all(got > 0)
  # the masks realise floor(s_l * n_l) per layer.
  m = masks.magnitude(params, sparsity, distribution="erk")
  for i, s in enumerate(shapes):
    x = np.asarray(params[f"l{i}"]["kernel"])
    k = int(np.floor((1.0 - got[i]) * x.size * (1 + 1e-12)))
    np.testing.assert_array_equal(m[f"l{i}"]["kernel"], _ref_keep(np.abs(x), k))


def test_mapping_distribution_first_match_wins():
  params = _random_params(7)
  dist = {r"conv1/": 0.5, r"^conv": 0.8, r"head": 0.25}
  sp = masks.leaf_sparsities(params, 0.3, distribution=dist)
  assert sp["conv1"]["kernel"] == 0.5
  assert sp["conv2"]["kernel"] == 0.8
  assert sp["head"]["kernel"] == 0.25
  assert sp["dense"]["kernel"] == 0.3
  assert sp["conv1"]["bias"] is None and sp["step"] is None
  m = _masks_by_path(masks.magnitude(params, 0.3, distribution=dist))
  expected = {"conv1/kernel": 0.5, "conv2/kernel": 0.8, "head/kernel": 0.25, "dense/kernel": 0.3}
  for path, x in _kernels(params):
    assert int(np.sum(~np.asarray(m[path]))) == _k(expected[path], x.size)


def test_custom_filter_and_nnx_state():
  from flax import nnx
  model = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  m = masks.magnitude(state, 0.5, distribution="global")
  leaves = dict(tree_lib.leaves_with_paths(m, is_leaf=_is_none))
  assert leaves["bias"] is None
  k = np.asarray(state["kernel"][...])
  np.testing.assert_array_equal(leaves["kernel"], _ref_keep(np.abs(k), 15))
  pruned = masks.apply(state, m)
  assert int(jnp.sum(pruned["kernel"][...] == 0)) == 15
  # filter selecting only biases
  mb = masks.magnitude({"kernel": jnp.ones((2, 2)), "bias": jnp.arange(4.0)}, 0.5,
                       filter_fn=tree_lib.regex("bias"))
  assert mb["kernel"] is None
  np.testing.assert_array_equal(mb["bias"], [False, False, True, True])


# ---------------------------------------------------------------------------
# Structured masks.


def _ref_n_by_m(x, n, m, axis):
  moved = np.moveaxis(np.abs(np.asarray(x, np.float32)), axis, -1)
  keep = np.zeros(moved.shape, bool)
  for idx in np.ndindex(moved.shape[:-1]):
    row = moved[idx]
    for g in range(0, row.size, m):
      group = row[g:g + m]
      # largest |x| first, lower index first among ties
      chosen = sorted(range(m), key=lambda j: (-group[j], j))[:n]
      for j in chosen:
        keep[idx + (g + j,)] = True
  return np.moveaxis(keep, -1, axis)


@pytest.mark.parametrize("shape,n,m,axis", [
    ((8, 12), 2, 4, -1),
    ((8, 3, 4), 1, 4, 0),
    ((2, 6, 4), 2, 3, 1),
    ((4, 16), 3, 8, 1),
    ((2, 128), 5, 64, -1),  # large-m (argsort) path
    ((4, 8), 0, 4, -1),
    ((4, 8), 4, 4, -1),
])
def test_n_by_m_against_brute_force(shape, n, m, axis):
  rng = np.random.default_rng(8)
  x = rng.standard_normal(shape).astype(np.float32)
  got = np.asarray(_N_BY_M_JIT(x, n=n, m=m, axis=axis))
  np.testing.assert_array_equal(got, _ref_n_by_m(x, n, m, axis))
  counts = np.moveaxis(got, axis, -1).reshape(-1, m).sum(-1)
  assert np.all(counts == n)


@pytest.mark.parametrize("m", [4, 64])
def test_n_by_m_ties_keep_lower_index(m):
  x = jnp.concatenate([jnp.ones(m), -jnp.ones(m)])[None]
  got = np.asarray(masks.n_by_m(x, 2, m))[0]
  expected = np.zeros(2 * m, bool)
  expected[[0, 1, m, m + 1]] = True
  np.testing.assert_array_equal(got, expected)


def _pool_ref(b, pool):
  a = np.abs(b.astype(np.float64))
  return {"l2": np.sqrt(np.sum(a * a)), "l1": np.mean(a), "max": np.max(a)}[pool]


@pytest.mark.parametrize("shape,block_shape,view", [
    ((8, 12), (2, 3), (8, 12)),
    ((4, 6, 8), (2, 3, 4), (4, 6, 8)),
    ((3, 3, 4, 8), (4, 2), (36, 8)),
])
@pytest.mark.parametrize("pool", ["l2", "l1", "max"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75])
def test_block_against_brute_force(shape, block_shape, view, pool, sparsity):
  rng = np.random.default_rng(9)
  x = rng.standard_normal(shape).astype(np.float32)
  got = np.asarray(_BLOCK_JIT(x, sparsity, block_shape=block_shape, pool=pool)).reshape(view)
  xv = x.reshape(view)
  grid = tuple(d // b for d, b in zip(view, block_shape))
  scores = np.zeros(grid)
  for g in np.ndindex(grid):
    sl = tuple(slice(i * b, (i + 1) * b) for i, b in zip(g, block_shape))
    scores[g] = _pool_ref(xv[sl], pool)
    blk = got[sl]
    assert np.all(blk == blk.flat[0])  # whole blocks
  k = _k(sparsity, scores.size)
  keep_blocks = _ref_keep(scores, k)
  assert int(np.sum(~keep_blocks)) == k
  for g in np.ndindex(grid):
    sl = tuple(slice(i * b, (i + 1) * b) for i, b in zip(g, block_shape))
    assert bool(got[sl].flat[0]) == bool(keep_blocks[g])


@pytest.mark.parametrize("shape,axis", [((3, 3, 4, 10), -1), ((10, 6), 0), ((5, 12), 1)])
@pytest.mark.parametrize("ord_", [1, 2, np.inf])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_channel_against_brute_force(shape, axis, ord_, sparsity):
  rng = np.random.default_rng(10)
  x = rng.standard_normal(shape).astype(np.float32)
  got = np.asarray(_CHANNEL_JIT(x, sparsity, axis=axis, ord=ord_))
  moved = np.moveaxis(x, axis, -1).reshape(-1, shape[axis]).astype(np.float64)
  norms = np.linalg.norm(moved, ord=ord_, axis=0)
  k = _k(sparsity, shape[axis])
  keep_ch = np.ones(shape[axis], bool)
  keep_ch[np.argsort(norms)[:k]] = False  # exactly the k lowest norms
  expected = np.broadcast_to(
      keep_ch.reshape([-1 if i == axis % len(shape) else 1 for i in range(len(shape))]), shape)
  np.testing.assert_array_equal(got, expected)


def test_structured_applies_to_selected_only():
  params = _random_params(11)
  params["dense"]["kernel"] = params["dense"]["kernel"][:, :8]
  params["head"]["kernel"] = params["head"]["kernel"][:, :4]
  m = masks.structured(params, functools.partial(masks.n_by_m, n=2, m=4))
  for path, x in _kernels(params):
    np.testing.assert_array_equal(_masks_by_path(m)[path], _ref_n_by_m(x, 2, 4, -1))
  assert m["conv1"]["bias"] is None and m["step"] is None


# ---------------------------------------------------------------------------
# apply and summary.


def _hand_example():
  params = {
      "a": {"kernel": jnp.asarray([[1.0, 0.0, -2.0], [3.0, 0.0, 4.0]]),  # 2 zeros, 1 zero ch
            "bias": jnp.asarray([0.0, 5.0, 6.0])},
      "b": {"kernel": jnp.asarray([[1.0, -1.0], [2.0, 2.0], [3.0, 3.0]], jnp.bfloat16)},
      "t": jnp.asarray(0.0),
  }
  m = {
      "a": {"kernel": jnp.asarray([[True, True, False], [True, True, False]]), "bias": None},
      "b": {"kernel": jnp.asarray([[False, True], [False, True], [True, False]])},
      "t": None,
  }
  return params, m


def test_apply_hand_example():
  params, m = _hand_example()
  out = masks.apply(params, m)
  np.testing.assert_array_equal(out["a"]["kernel"], [[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
  np.testing.assert_array_equal(out["b"]["kernel"].astype(jnp.float32),
                                [[0.0, -1.0], [0.0, 2.0], [3.0, 0.0]])
  assert out["b"]["kernel"].dtype == jnp.bfloat16
  assert out["a"]["bias"] is params["a"]["bias"] and out["t"] is params["t"]
  # masked-out entries are +0.0 exactly (no -0.0 or NaN from multiplication)
  neg = masks.apply({"kernel": jnp.asarray([[-1.0, jnp.inf]])},
                    {"kernel": jnp.asarray([[False, False]])})["kernel"]
  assert np.all(np.signbit(np.asarray(neg)) == False) and np.all(np.asarray(neg) == 0)  # noqa: E712


def test_summary_hand_example():
  params, m = _hand_example()
  s0 = masks.summary(params)
  rows = {l["path"]: l for l in s0["layers"]}
  assert list(rows) == ["a/bias", "a/kernel", "b/kernel"]  # scalar 't' is not a layer
  assert rows["a/kernel"] == {"path": "a/kernel", "shape": (2, 3), "params": 6, "zeros": 2,
                              "density": 4 / 6, "zero_channels": 1, "channels": 3}
  assert rows["a/bias"]["zeros"] == 1 and rows["a/bias"]["zero_channels"] == 0
  assert rows["b/kernel"]["zeros"] == 0
  assert s0["total"] == {"params": 15, "zeros": 3, "density": 12 / 15, "sparsity": 3 / 15}

  s1 = masks.summary(params, m)
  rows = {l["path"]: l for l in s1["layers"]}
  assert rows["a/kernel"]["zeros"] == 4 and rows["a/kernel"]["zero_channels"] == 2
  assert rows["b/kernel"]["zeros"] == 3 and rows["b/kernel"]["zero_channels"] == 0
  assert s1["total"]["zeros"] == 8 and s1["total"]["params"] == 15
  np.testing.assert_allclose(s1["total"]["sparsity"], 8 / 15)

  text = masks.format_summary(s1)
  lines = text.splitlines()
  assert lines[0].split() == ["path", "shape", "params", "zeros", "density", "zero", "ch"]
  assert lines[-1].split() == ["total", "15", "8", "0.4667", "2/5"]
  a_line = next(l for l in lines if l.startswith("a/kernel"))
  assert a_line.split() == ["a/kernel", "2x3", "6", "4", "0.3333", "2/3"]
  # right-aligned numeric columns end at the same offset as the header's
  assert a_line.index("0.3333") + 6 == lines[0].index("density") + 7


# ---------------------------------------------------------------------------
# Errors.


_P = {"l": {"kernel": jnp.ones((4, 8))}}


@pytest.mark.parametrize("fn,match", [
    (lambda: masks.magnitude(_P, -0.1), r"sparsity must be in \[0, 1\), got -0\.1"),
    (lambda: masks.magnitude(_P, 1.0), r"sparsity must be in \[0, 1\), got 1\.0"),
    (lambda: masks.magnitude(_P, 1.5, distribution="global"), r"sparsity must be in \[0, 1\), got 1\.5"),
    (lambda: masks.magnitude(_P, float("nan")), r"sparsity.*nan"),
    (lambda: masks.magnitude(_P, "0.5"), r"sparsity must be a number.*'0\.5'"),
    (lambda: masks.magnitude(_P, 0.5, distribution="erdos"),
     r"distribution.*'uniform', 'erk', 'global'.*'erdos'"),
    (lambda: masks.magnitude(_P, 0.5, distribution={"l": 1.2}), r"distribution\['l'\].*1\.2"),
    (lambda: masks.magnitude(_P, 0.5, distribution={"(": 0.2}), r"distribution.*regex"),
    (lambda: jax.jit(lambda s: masks.magnitude(_P, s, distribution="erk"))(0.5),
     r"sparsity.*concrete"),
    (lambda: masks.leaf_sparsities(_P, 0.5, distribution="global"), r"distribution='global'"),
    (lambda: masks.magnitude_per_leaf(_P, {"l": {"kernel": 1.0}}), r"sparsities must be in \[0, 1\), got 1\.0"),
    (lambda: masks.magnitude_per_leaf(_P, {"l": 0.5, "x": 0.1}), r"sparsities.*structure"),
    (lambda: masks.kth_smallest_abs([jnp.ones(3)], 4), r"k must be .*\[0, 3\].*4"),
    (lambda: masks.n_by_m(jnp.ones((4, 8)), 5, 4), r"n must be in \[0, m\].*n=5"),
    (lambda: masks.n_by_m(jnp.ones((4, 8)), -1, 4), r"n must be.*n=-1"),
    (lambda: masks.n_by_m(jnp.ones((4, 8)), 0, 0), r"m must be a positive int.*m=0"),
    (lambda: masks.n_by_m(jnp.ones((4, 6)), 2, 4), r"axis=-1 has length 6, m=4"),
    (lambda: masks.n_by_m(jnp.ones((6, 8)), 2, 4, axis=0), r"axis=0 has length 6, m=4"),
    (lambda: masks.n_by_m(jnp.ones((4, 8)), 2, 4, axis=2), r"axis=2"),
    (lambda: masks.block(jnp.ones((4, 6)), 0.5, (2, 4)), r"block_shape \(2, 4\).*\(4, 6\)"),
    (lambda: masks.block(jnp.ones((4, 6)), 0.5, (2, 2, 2)), r"block_shape.*\(4, 6\)"),
    (lambda: masks.block(jnp.ones((3, 3, 4, 6)), 0.5, (4, 4)), r"block_shape.*\(36, 6\)"),
    (lambda: masks.block(jnp.ones((4, 6)), 0.5, (2, 3), pool="mean"), r"pool.*'mean'"),
    (lambda: masks.block(jnp.ones((4, 6)), 1.0, (2, 3)), r"sparsity must be in \[0, 1\)"),
    (lambda: masks.channel(jnp.ones((4, 6)), 0.5, ord=3), r"ord.*3"),
    (lambda: masks.channel(jnp.ones((4, 6)), 0.5, axis=-3), r"axis=-3"),
    (lambda: masks.channel(jnp.ones((4, 6)), -0.5), r"sparsity.*-0\.5"),
    (lambda: masks.apply(_P, {"l": {"kernel": jnp.ones((4, 7), bool)}}), r"masks.*\(4, 7\)"),
    (lambda: masks.apply(_P, {"m": None}), r"masks.*structure"),
    (lambda: masks.structured(_P, "n_by_m"), r"fn must be callable"),
])
def test_bad_inputs_raise(fn, match):
  with pytest.raises(ValueError, match=match):
    fn()


@pytest.mark.parametrize("scale", [1e20, 1e-25, 1.0])
def test_l2_scores_survive_extreme_magnitudes(scale):
  """Squared norms of 1e20 overflow (and of 1e-25 underflow) in float32; the ranking must not."""
  row = jnp.asarray(np.array([[1.0, 2.0, 3.0, 4.0]]) * scale, jnp.float32)
  np.testing.assert_array_equal(masks.channel(row, 0.5), [[False, False, True, True]])
  np.testing.assert_array_equal(masks.block(row, 0.5, (1, 1)), [[False, False, True, True]])
  cols = jnp.tile(row, (3, 1))
  np.testing.assert_array_equal(masks.channel(cols, 0.25)[0], [False, True, True, True])


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan")])
def test_erk_densities_rejects_bad_sparsity(bad):
  with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
    masks.erk_densities([(4, 4), (8, 8)], bad)


def test_masks_with_a_leaf_where_params_have_a_subtree_are_an_error():
  params = {"fc1": {"bias": jnp.ones(16), "kernel": jnp.ones((32, 16))},
            "fc2": {"bias": jnp.ones(4), "kernel": jnp.ones((16, 4))}}
  for bad in ({"fc1": np.zeros(16, bool), "fc2": None},
              {"fc1": np.zeros((32, 16), bool), "fc2": None}):
    with pytest.raises(ValueError, match="same tree structure as params"):
      masks.apply(params, bad)
  # None for a whole subtree means none of it is masked.
  out = masks.apply(params, {"fc1": None, "fc2": {"bias": None,
                                                   "kernel": np.zeros((16, 4), bool)}})
  np.testing.assert_array_equal(out["fc1"]["kernel"], params["fc1"]["kernel"])
  np.testing.assert_array_equal(out["fc2"]["kernel"], np.zeros((16, 4)))


def test_params_holding_tuples_get_the_same_masks_as_dicts():
  """A tuple inside params is a container (it used to be taken for a (sparsity, leaf) pair)."""
  rng = np.random.default_rng(21)
  a, b = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((6, 8), (5, 7)))
  as_tuple, as_dict = {"layers": (a, b)}, {"layers": {"0": a, "1": b}}
  everything = lambda p, l: True  # pylint: disable=unnecessary-lambda-assignment
  for dist in ("uniform", "global", "erk"):
    mt = masks.magnitude(as_tuple, 0.6, filter_fn=everything, distribution=dist)
    md = masks.magnitude(as_dict, 0.6, filter_fn=everything, distribution=dist)
    for i in range(2):
      np.testing.assert_array_equal(mt["layers"][i], md["layers"][str(i)])
  pruned = masks.apply(as_tuple, mt)
  np.testing.assert_array_equal(pruned["layers"][1], jnp.where(mt["layers"][1], b, 0.0))
  tx = optim.magnitude_pruning(0.6, begin_step=0, end_step=0, update_every=1,
                               filter_fn=everything)
  upd, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, as_tuple), tx.init(as_tuple), as_tuple)
  after = optax.apply_updates(as_tuple, upd)
  assert [int((x == 0).sum()) for x in after["layers"]] == [28, 21]  # floor(0.6 n), n = 48, 35


def test_float64_magnitudes_are_compared_in_float64():
  """Under x64, magnitudes that are distinct only in float64 (or int64 above 2**24) are not tied:
  every distribution and n:m keep what a full float64 sort keeps."""
  rng = np.random.default_rng(22)
  with jax.enable_x64(True):
    a = 1.0 + rng.permutation(48).reshape(6, 8) * 1e-12  # all equal in float32
    b = 1.0 + (48 + rng.permutation(35).reshape(5, 7)) * 1e-12
    params = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
    everything = lambda p, l: True  # pylint: disable=unnecessary-lambda-assignment
    m = masks.magnitude(params, 0.25, filter_fn=everything)
    for name, x in (("a", a), ("b", b)):
      k = math.floor(0.25 * x.size)
      np.testing.assert_array_equal(m[name], x > np.sort(x, axis=None)[k - 1])
    g = masks.magnitude(params, 0.25, filter_fn=everything, distribution="global")
    both = np.concatenate([a.ravel(), b.ravel()])
    t = np.sort(both)[math.floor(0.25 * both.size) - 1]
    np.testing.assert_array_equal(g["a"], a > t)
    np.testing.assert_array_equal(g["b"], b > t)
    assert float(masks.kth_smallest_abs([params["a"], params["b"]], 5)) == np.sort(both)[4]
    assert masks.kth_smallest_abs([params["a"], params["b"]], 0).dtype == jnp.float64
    nm = masks.n_by_m(jnp.asarray(a[:, :8]), 2, 8, axis=-1)
    np.testing.assert_array_equal(np.sum(nm, axis=-1), 2)
    np.testing.assert_array_equal(nm, a[:, :8] >= np.sort(a[:, :8], axis=-1)[:, -2:-1])
    ints = jnp.asarray([[2**24 + 1, 2**24], [3, 4]], jnp.int64)
    np.testing.assert_array_equal(masks.magnitude({"kernel": ints}, 0.75)["kernel"], [[True, False],
                                                                          [False, False]])


def test_erk_keeps_scalar_leaves_dense_and_hits_the_budget():
  """A 0-d leaf has no ERK scale (it got density 0 and its entry went to the others' budget)."""
  d = masks.erk_densities([(4, 4), ()], 0.5)
  assert d[1] == 1.0 and d[0] == pytest.approx((0.5 * 17 - 1) / 16)
  params = {"a": jnp.arange(1.0, 17.0).reshape(4, 4), "s": jnp.float32(2.0)}
  m = masks.magnitude(params, 0.5, distribution="erk", filter_fn=lambda p, l: True)
  assert bool(m["s"]) and int(m["a"].sum()) == 16 - math.floor((1 - d[0]) * 16)


def test_summary_counts_a_leaf_with_an_empty_axis():
  s = masks.summary({"kernel": jnp.zeros((4, 0)), "b": {"kernel": jnp.zeros((3, 2)).at[0, 1].set(1)}})
  by_path = {l["path"]: l for l in s["layers"]}
  assert (by_path["kernel"]["params"], by_path["kernel"]["channels"]) == (0, 0)
  assert (by_path["b/kernel"]["zeros"], by_path["b/kernel"]["zero_channels"]) == (5, 1)
