"""Sparse formats and matmul kernels against dense NumPy/JAX computations.

Interpret-mode Pallas runs are slow on a CPU, so their shapes stay small.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from sparsejax import masks
from sparsejax import kernels as spk
from sparsejax.kernels import bsr as bsr_mod
from sparsejax.kernels import cpu as cpu_mod
from sparsejax.kernels import nm as nm_mod

# ---------------------------------------------------------------------------
# Helpers.


def _block_mask(rng, shape, bs, density, *, empty_col=None, empty_row=None, full=False):
  nb, nc = shape[0] // bs[0], shape[1] // bs[1]
  grid = np.ones((nb, nc), bool) if full else rng.random((nb, nc)) < density
  if empty_col is not None:
    grid[:, empty_col] = False
  if empty_row is not None:
    grid[empty_row, :] = False
  return np.repeat(np.repeat(grid, bs[0], 0), bs[1], 1)


def _counted_mask(shape, bs):
  """Column block j keeps j % (nb + 1) blocks: many distinct counts, some empty."""
  nb, nc = shape[0] // bs[0], shape[1] // bs[1]
  grid = np.zeros((nb, nc), bool)
  for j in range(nc):
    grid[(np.arange(j % (nb + 1)) * 3 + j) % nb, j] = True
  return np.repeat(np.repeat(grid, bs[0], 0), bs[1], 1)


def _close(actual, expected, *, tol=1e-5):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def _rand(rng, shape, dtype=np.float32):
  return jnp.asarray(rng.standard_normal(shape).astype(np.float32), dtype)


# (impl, kwargs) of every block-sparse implementation.
BSR_IMPLS = [
    ("reference", {}),
    ("xla", {}),
    ("dense", {}),
    ("pallas", {"scalar_prefetch": True}),
    ("pallas", {"scalar_prefetch": False}),
]
BSR_IDS = ["reference", "xla", "dense", "pallas_prefetch", "pallas_indexed"]

# (K, N, B, block_shape, mask kind) -- small enough for interpret mode.
BSR_CASES = [
    (64, 48, 13, (8, 8), "random"),        # B not a multiple of the batch tile
    (32, 64, 16, (16, 32), "full"),        # fully dense
    (64, 32, 8, (32, 8), "one"),           # a single stored block
    (48, 64, 16, (16, 16), "counted"),     # many distinct counts, empty columns
    (64, 64, 8, (16, 16), "empty"),        # nothing stored
]
BSR_CASE_IDS = ["random_empty_rows_cols", "dense", "one_block", "counted", "all_empty"]


def _case_mask(rng, K, N, bs, kind):
  if kind == "random":
    return _block_mask(rng, (K, N), bs, 0.5, empty_col=1, empty_row=2)
  if kind == "full":
    return _block_mask(rng, (K, N), bs, 1.0, full=True)
  if kind == "one":
    m = np.zeros((K, N), bool)
    m[bs[0]:2 * bs[0], 2 * bs[1]:3 * bs[1]] = True
    return m
  if kind == "counted":
    return _counted_mask((K, N), bs)
  return np.zeros((K, N), bool)


# ---------------------------------------------------------------------------
# Formats.


@pytest.mark.parametrize("K,N,B,bs,kind", BSR_CASES, ids=BSR_CASE_IDS)
def test_block_sparse_layout_matches_brute_force(K, N, B, bs, kind):
  del B
  rng = np.random.default_rng(0)
  w = rng.standard_normal((K, N)).astype(np.float32)
  mask = _case_mask(rng, K, N, bs, kind)
  f = spk.BlockSparse.from_dense(w, mask, bs)
  bk, bn = bs
  nb, nc = K // bk, N // bn
  exp_counts, exp_rows, exp_blocks = [], [], []
  for j in range(nc):
    rows = [r for r in range(nb) if mask[r * bk, j * bn]]
    exp_counts.append(len(rows))
    exp_rows += rows
    exp_blocks += [w[r * bk:(r + 1) * bk, j * bn:(j + 1) * bn] for r in rows]
  assert f.counts == tuple(exp_counts)
  assert f.indices.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(f.indices), exp_rows)
  np.testing.assert_array_equal(np.asarray(f.data).reshape(-1, bk, bn),
                                np.asarray(exp_blocks, np.float32).reshape(-1, bk, bn))
  np.testing.assert_array_equal(np.asarray(f.to_dense()), np.where(mask, w, 0))
  assert f.density == pytest.approx(mask.mean())


def test_block_sparse_from_masks_block_and_pytree():
  rng = np.random.default_rng(1)
  w = _rand(rng, (64, 96))
  mask = masks.block(w, 0.75, (16, 32))
  f = spk.BlockSparse.from_dense(w, mask, (16, 32))
  assert f.nnz_blocks == 12 - 9 and sum(f.counts) == f.nnz_blocks
  leaves, treedef = jax.tree.flatten(f)
  assert len(leaves) == 2 and leaves[0] is f.data and leaves[1] is f.indices
  again = jax.tree.unflatten(treedef, leaves)
  assert again.counts == f.counts and again.block_shape == (16, 32)
  # Static metadata survives jit; values may be traced when the mask is concrete.
  dense = jax.jit(lambda f: f.to_dense())(f)
  np.testing.assert_array_equal(np.asarray(dense), np.where(mask, w, 0))
  traced = jax.jit(lambda w: spk.BlockSparse.from_dense(w, np.asarray(mask), (16, 32)).data)(w)
  np.testing.assert_array_equal(np.asarray(traced), np.asarray(f.data))


def test_block_sparse_errors():
  w = np.ones((32, 32), np.float32)
  partial = _block_mask(np.random.default_rng(0), (32, 32), (8, 8), 0.5)
  partial[3, 5] = not partial[3, 5]
  with pytest.raises(ValueError, match=r"does not fit block_shape \(8, 8\): block \(0, 0\)"):
    spk.BlockSparse.from_dense(w, partial, (8, 8))
  with pytest.raises(ValueError, match="does not tile"):
    spk.BlockSparse.from_dense(w, np.ones((32, 32), bool), (12, 8))
  with pytest.raises(ValueError, match="block_shape"):
    spk.BlockSparse.from_dense(w, np.ones((32, 32), bool), (8,))
  with pytest.raises(ValueError, match="mask must have the weight's shape"):
    spk.BlockSparse.from_dense(w, np.ones((32, 16), bool), (8, 8))
  with pytest.raises(TypeError, match="bool"):
    spk.BlockSparse.from_dense(w, np.ones((32, 32)), (8, 8))
  with pytest.raises(ValueError, match="2-D"):
    spk.BlockSparse.from_dense(np.ones(32, np.float32), np.ones(32, bool), (8, 8))
  with pytest.raises(ValueError, match="concrete"):
    jax.jit(lambda m: spk.BlockSparse.from_dense(w, m, (8, 8)).data)(np.ones((32, 32), bool))


def test_balanced_mask_and_format():
  rng = np.random.default_rng(2)
  K, N, bs = 64, 48, (8, 16)
  w = rng.standard_normal((K, N)).astype(np.float32)
  mask = np.asarray(spk.balanced_block_mask(w, 0.6, bs))
  nb, nc = K // bs[0], N // bs[1]
  keep = nb - int(np.floor(0.6 * nb))                     # 8 - 4 = 4 per column block
  scores = (w.reshape(nb, bs[0], nc, bs[1]) ** 2).sum(axis=(1, 3))
  for j in range(nc):
    kept = {r for r in range(nb) if mask[r * bs[0], j * bs[1]]}
    assert kept == set(np.argsort(-scores[:, j], kind="stable")[:keep])
  f = spk.BalancedBlockSparse.from_dense(w, mask, bs)
  assert f.blocks_per_output == keep and f.data.shape == (nc, keep, *bs)
  np.testing.assert_array_equal(np.asarray(f.to_dense()), np.where(mask, w, 0))
  flat = f.to_block_sparse()
  ref = spk.BlockSparse.from_dense(w, mask, bs)
  assert flat.counts == ref.counts == (keep,) * nc
  np.testing.assert_array_equal(np.asarray(flat.indices), np.asarray(ref.indices))
  np.testing.assert_array_equal(np.asarray(flat.data), np.asarray(ref.data))
  uneven = _counted_mask((K, N), bs)
  with pytest.raises(ValueError, match="load-balanced format: output blocks keep different"):
    spk.BalancedBlockSparse.from_dense(w, uneven, bs)
  with pytest.raises(ValueError, match="sparsity"):
    spk.balanced_block_mask(w, 1.0, bs)


NM_CASES = [(2, 4, 0), (2, 4, 1), (1, 4, 0), (3, 8, 1), (4, 4, 0), (0, 4, 1)]


@pytest.mark.parametrize("n,m,axis", NM_CASES)
def test_nm_format_matches_brute_force(n, m, axis):
  rng = np.random.default_rng(3)
  K, N = 32, 24
  w = rng.standard_normal((K, N)).astype(np.float32)
  mask = np.array(masks.n_by_m(w, n, m, axis=axis))
  mask &= rng.random(mask.shape) < 0.8        # some groups keep fewer than n
  f = spk.NMSparse.from_dense(w, mask, n, m, axis=axis)
  assert f.indices.dtype == jnp.uint8
  vals, idx = np.asarray(f.values), np.asarray(f.indices)
  # Brute force over groups: kept positions ascending, then unused slots (index m, value 0).
  wt, mt = (w, mask) if axis == 0 else (w.T, mask.T)
  for g in range(wt.shape[0] // m):
    for c in range(wt.shape[1]):
      kept = [r for r in range(m) if mt[g * m + r, c]]
      slots = (vals[:, g, c], idx[:, g, c]) if axis == 0 else (vals[:, c, g], idx[:, c, g])
      exp_idx = kept + [m] * (n - len(kept))
      exp_val = [wt[g * m + r, c] for r in kept] + [0.0] * (n - len(kept))
      np.testing.assert_array_equal(slots[1], exp_idx)
      np.testing.assert_array_equal(slots[0], exp_val)
  np.testing.assert_array_equal(np.asarray(f.to_dense()), np.where(mask, w, 0))


def test_nm_errors():
  w = np.arange(64, dtype=np.float32).reshape(8, 8)
  too_many = np.array(masks.n_by_m(w, 2, 4, axis=0))
  too_many[0:4, 3] = True
  with pytest.raises(ValueError, match=r"2:4 .* group w\[0:4, 3\] keeps 4 entries"):
    spk.NMSparse.from_dense(w, too_many, 2, 4, axis=0)
  # A mask grouped along the other axis does not fit.
  with pytest.raises(ValueError, match="does not fit 2:4 sparsity along axis 1"):
    spk.NMSparse.from_dense(w, np.asarray(masks.n_by_m(w, 2, 4, axis=0)), 2, 4, axis=1)
  with pytest.raises(ValueError, match="must divide"):
    spk.NMSparse.from_dense(w, np.ones((8, 8), bool), 1, 3)
  with pytest.raises(ValueError, match="n must be"):
    spk.NMSparse.from_dense(w, np.ones((8, 8), bool), 5, 4)
  with pytest.raises(ValueError, match="at most 255"):
    spk.NMSparse.from_dense(np.ones((512, 8), np.float32), np.ones((512, 8), bool), 1, 256)
  with pytest.raises(ValueError, match="axis"):
    spk.NMSparse.from_dense(w, np.ones((8, 8), bool), 4, 4, axis=2)
  with pytest.raises(TypeError, match="BlockSparse, BalancedBlockSparse or NMSparse"):
    spk.to_dense(np.ones((2, 2)))


@pytest.mark.parametrize("idx,match", [
    ([[0], [0]], r"strictly ascending.*0 in slot 0 and 0 in slot 1"),   # repeated position
    ([[2], [1]], r"strictly ascending.*2 in slot 0 and 1 in slot 1"),   # descending
    ([[4], [1]], r"strictly ascending.*4 in slot 0 and 1 in slot 1"),   # unused before used
    ([[0], [9]], r"in-group positions in \[0, m = 4\].*\[0, 9\]"),       # out of range
])
def test_hand_built_nm_positions_are_checked(idx, match):
  """The impls disagreed on such indices (overwrite vs sum; out-of-range dropped)."""
  values = jnp.asarray([1.0, 2.0])[:, None, None]
  f = spk.NMSparse(values, jnp.asarray(idx, jnp.uint8)[:, :, None], (4, 1), 2, 4, 0)
  with pytest.raises(ValueError, match=match):
    f.check()
  with pytest.raises(ValueError, match=match):
    spk.nm_matmul(jnp.ones((1, 4)), f, impl="xla")
  spk.NMSparse(values, jnp.asarray([[1], [4]], jnp.uint8)[:, :, None], (4, 1), 2, 4, 0).check()


def test_nm_round_trip_keeps_negative_zero_and_rejects_a_float_axis():
  w = np.array([[-0.0, 1.0], [2.0, -0.0], [0.5, 3.0], [1.0, 2.0]], np.float32)
  dense = np.asarray(spk.NMSparse.from_dense(w, np.ones((4, 2), bool), 4, 4).to_dense())
  np.testing.assert_array_equal(np.signbit(dense), np.signbit(w))
  with pytest.raises(ValueError, match="axis must be 0 .* got 1.0"):
    spk.NMSparse.from_dense(w, np.ones((4, 2), bool), 2, 2, axis=1.0)


def test_balanced_block_mask_never_prunes_nan_first():
  """NaN blocks rank above every number, as in sparsejax.masks (they were pruned first)."""
  w = np.array([[np.nan], [1.0], [2.0], [3.0]], np.float32)
  for pool in ("l2", "l1", "max"):
    got = np.asarray(spk.balanced_block_mask(w, 0.5, (1, 1), pool=pool)).ravel()
    np.testing.assert_array_equal(got, np.asarray(masks.block(w, 0.5, (1, 1))).ravel())
    np.testing.assert_array_equal(got, [True, False, False, True])


# ---------------------------------------------------------------------------
# Block-sparse matmul.


@pytest.mark.parametrize("impl,kw", BSR_IMPLS, ids=BSR_IDS)
@pytest.mark.parametrize("K,N,B,bs,kind", BSR_CASES, ids=BSR_CASE_IDS)
def test_bsr_matmul_matches_dense(impl, kw, K, N, B, bs, kind):
  rng = np.random.default_rng(4)
  w = rng.standard_normal((K, N)).astype(np.float32)
  x = rng.standard_normal((B, K)).astype(np.float32)
  mask = _case_mask(rng, K, N, bs, kind)
  f = spk.BlockSparse.from_dense(w, mask, bs)
  y = jax.jit(lambda x, f: spk.bsr_matmul(x, f, impl=impl, block_batch=8 if impl == "pallas"
                                          and not kw["scalar_prefetch"] else None, **kw))(x, f)
  assert y.shape == (B, N) and y.dtype == jnp.float32
  _close(y, x @ np.where(mask, w, 0))


@pytest.mark.parametrize("K,N,B,bs,density", [
    (512, 384, 40, (32, 64), 0.3),
    (256, 256, 33, (128, 128), 0.5),
    (128, 256, 17, (8, 8), 0.1),
])
def test_bsr_xla_larger_shapes(K, N, B, bs, density):
  rng = np.random.default_rng(5)
  w = rng.standard_normal((K, N)).astype(np.float32)
  x = rng.standard_normal((B, K)).astype(np.float32)
  mask = _block_mask(rng, (K, N), bs, density, empty_col=0)
  f = spk.BlockSparse.from_dense(w, mask, bs)
  exp = x.astype(np.float64) @ np.where(mask, w, 0)
  _close(jax.jit(lambda x, f: spk.bsr_matmul(x, f, impl="xla"))(x, f), exp)
  _close(jax.jit(spk.bsr_matmul_reference)(x, f), exp)
  bal_mask = np.asarray(spk.balanced_block_mask(w, 1 - density, bs))
  fb = spk.BalancedBlockSparse.from_dense(w, bal_mask, bs)
  _close(jax.jit(spk.bsr_matmul)(x, fb), x.astype(np.float64) @ np.where(bal_mask, w, 0))


def test_bsr_xla_auto_batch_tile(monkeypatch):
  monkeypatch.setattr(cpu_mod, "_num_streams", lambda: 2)
  assert cpu_mod.auto_batch_tile(512, 32) == cpu_mod.BATCH_TILE      # narrow blocks: cache-sized tiles
  assert cpu_mod.auto_batch_tile(512, 128) == 256                    # wide: one tile per stream
  assert cpu_mod.auto_batch_tile(300, 64) == 152                     # ... a multiple of 8
  assert cpu_mod.auto_batch_tile(100, 128) == cpu_mod.BATCH_TILE     # never below BATCH_TILE


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "big"])
def test_bsr_xla_bad_batch_tile(bad):
  f = spk.BlockSparse.from_dense(jnp.ones((32, 32)), np.ones((32, 32), bool), (16, 16))
  with pytest.raises(ValueError, match="batch_tile"):
    cpu_mod.bsr_matmul_xla(jnp.ones((4, 32)), f.data, f.indices, shape=f.shape,
                           block_shape=(16, 16), counts=f.counts, batch_tile=bad)


@pytest.mark.parametrize("batch_tile", [None, 64, 128, "auto"])
def test_bsr_xla_batch_tiles_and_streams(batch_tile):
  # 300 rows: several tiles (padded), split into independent streams; values and gradients.
  rng = np.random.default_rng(13)
  K, N, B, bs = 64, 96, 300, (16, 32)
  w = _rand(rng, (K, N))
  x = _rand(rng, (B, K))
  mask = _counted_mask((K, N), bs)
  f = spk.BlockSparse.from_dense(w, mask, bs)

  def sparse(x, data):
    return cpu_mod.bsr_matmul_xla(x, data, f.indices, shape=f.shape, block_shape=bs,
                                  counts=f.counts, batch_tile=batch_tile)

  y, vjp = jax.vjp(sparse, x, f.data)
  _close(y, x @ jnp.where(mask, w, 0))
  cot = _rand(rng, (B, N))
  gx, gdata = vjp(cot)
  ex, ew = jax.vjp(lambda x, w: x @ jnp.where(mask, w, 0), x, w)[1](cot)
  _close(gx, ex)
  _close(f.with_data(gdata).to_dense(), ew)


@pytest.mark.parametrize("impl,kw", BSR_IMPLS, ids=BSR_IDS)
def test_bsr_matmul_bf16(impl, kw):
  rng = np.random.default_rng(6)
  K, N, B, bs = 64, 64, 16, (16, 16)
  mask = _block_mask(rng, (K, N), bs, 0.5, empty_col=0)
  w = _rand(rng, (K, N), jnp.bfloat16)
  x = _rand(rng, (B, K), jnp.bfloat16)
  f = spk.BlockSparse.from_dense(w, mask, bs)
  y = jax.jit(lambda x, f: spk.bsr_matmul(x, f, impl=impl, **kw))(x, f)
  assert y.dtype == jnp.bfloat16
  exp = np.asarray(x, np.float32) @ np.where(mask, np.asarray(w, np.float32), 0)
  _close(y, exp, tol=2e-2)


@pytest.mark.parametrize("impl,kw", BSR_IMPLS, ids=BSR_IDS)
@pytest.mark.parametrize("balanced", [False, True], ids=["bsr", "balanced"])
def test_bsr_gradients_match_dense(impl, kw, balanced):
  rng = np.random.default_rng(7)
  K, N, B, bs = 48, 64, 8, (16, 16)
  w = _rand(rng, (K, N))
  x = _rand(rng, (B, K))
  if balanced:
    mask = np.asarray(spk.balanced_block_mask(w, 0.5, bs))
    f = spk.BalancedBlockSparse.from_dense(w, mask, bs)
  else:
    mask = _counted_mask((K, N), bs)
    f = spk.BlockSparse.from_dense(w, mask, bs)

  def sparse_loss(x, data):
    return jnp.sum(jnp.sin(spk.bsr_matmul(x, f.with_data(data), impl=impl, **kw)))

  def dense_loss(x, w):
    return jnp.sum(jnp.sin(x @ jnp.where(mask, w, 0)))

  gx, gdata = jax.jit(jax.grad(sparse_loss, argnums=(0, 1)))(x, f.data)
  ex, ew = jax.jit(jax.grad(dense_loss, argnums=(0, 1)))(x, w)
  _close(gx, ex)
  _close(f.with_data(gdata).to_dense(), ew)


def test_bsr_leading_dims_auto_impl_and_errors(monkeypatch):
  rng = np.random.default_rng(8)
  K, N, bs = 32, 48, (8, 16)
  w = rng.standard_normal((K, N)).astype(np.float32)
  mask = np.zeros((K, N), bool)
  mask[8:16, 16:32] = True                       # 1 of 12 blocks: below 8 / (8 + 64)
  f = spk.BlockSparse.from_dense(w, mask, bs)
  x = rng.standard_normal((2, 3, K)).astype(np.float32)
  calls = []
  real = cpu_mod.bsr_matmul_xla
  monkeypatch.setattr(cpu_mod, "bsr_matmul_xla", lambda *a, **k: calls.append(1) or real(*a, **k))
  y = spk.bsr_matmul(x, f)                       # "auto" on a CPU -> the XLA path
  assert calls and y.shape == (2, 3, N)
  _close(y, x @ np.where(mask, w, 0))
  # Denser than the threshold: "auto" multiplies densely on a CPU.
  calls.clear()
  mask2 = _block_mask(rng, (K, N), bs, 0.5, full=True)
  y2 = spk.bsr_matmul(x, spk.BlockSparse.from_dense(w, mask2, bs))
  assert not calls
  _close(y2, x @ w)
  assert bsr_mod.cpu_dense_threshold((32, 32)) == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., K\) with K = 32"):
    spk.bsr_matmul(np.ones((4, 16), np.float32), f)
  with pytest.raises(TypeError, match="floating"):
    spk.bsr_matmul(np.ones((4, K), np.int32), f)
  with pytest.raises(TypeError, match="BlockSparse or BalancedBlockSparse"):
    spk.bsr_matmul(x, w)
  with pytest.raises(ValueError, match="impl must be one of"):
    spk.bsr_matmul(x, f, impl="cuda")
  with pytest.raises(ValueError, match="block_batch"):
    spk.bsr_matmul(x, f, block_batch=0)
  bad = spk.BlockSparse(f.data, f.indices, f.shape, f.block_shape, f.counts[:-1])
  with pytest.raises(ValueError, match="counts must have"):
    spk.bsr_matmul(x, bad)


def test_bucket_plan_covers_every_block_once():
  counts = (3, 0, 1, 3, 2, 0, 1, 4)
  plan = cpu_mod._plan(counts)  # pylint: disable=protected-access
  seen = np.concatenate([b.pos.reshape(-1) for b in plan.buckets])
  np.testing.assert_array_equal(np.sort(seen), np.arange(sum(counts)))
  assert [b.count for b in plan.buckets] == [4, 3, 2, 1] and plan.num_empty == 2
  stacked = np.concatenate([b.cols for b in plan.buckets] + [np.array([1, 5])])
  np.testing.assert_array_equal(stacked[plan.perm], np.arange(len(counts)))
  # One count everywhere: a single contiguous bucket, no permutation.
  flat = cpu_mod._plan((2, 2, 2))  # pylint: disable=protected-access
  assert len(flat.buckets) == 1 and flat.buckets[0].start == 0 and flat.perm is None


# ---------------------------------------------------------------------------
# N:M matmul.

NM_IMPLS = ["reference", "xla", "pallas"]
NM_OP_CASES = [(2, 4, 0), (2, 4, 1), (1, 4, 0), (3, 8, 1), (0, 4, 0)]


@pytest.mark.parametrize("impl", NM_IMPLS)
@pytest.mark.parametrize("n,m,axis", NM_OP_CASES)
def test_nm_matmul_matches_dense(impl, n, m, axis):
  rng = np.random.default_rng(9)
  K, N, B = 64, 48, 11
  w = rng.standard_normal((K, N)).astype(np.float32)
  x = rng.standard_normal((B, K)).astype(np.float32)
  mask = np.array(masks.n_by_m(w, n, m, axis=axis)) & (rng.random((K, N)) < 0.8)
  f = spk.NMSparse.from_dense(w, mask, n, m, axis=axis)
  y = jax.jit(lambda x, f: spk.nm_matmul(x, f, impl=impl))(x, f)
  assert y.shape == (B, N)
  _close(y, x @ np.where(mask, w, 0))


@pytest.mark.parametrize("impl", NM_IMPLS)
def test_nm_matmul_bf16(impl):
  rng = np.random.default_rng(10)
  K, N, B = 64, 32, 16
  w = _rand(rng, (K, N), jnp.bfloat16)
  x = _rand(rng, (B, K), jnp.bfloat16)
  mask = np.asarray(masks.n_by_m(w, 2, 4, axis=0))
  f = spk.NMSparse.from_dense(w, mask, 2, 4)
  y = jax.jit(lambda x, f: spk.nm_matmul(x, f, impl=impl))(x, f)
  assert y.dtype == jnp.bfloat16
  exp = np.asarray(x, np.float32) @ np.where(mask, np.asarray(w, np.float32), 0)
  _close(y, exp, tol=2e-2)


@pytest.mark.parametrize("fmt,impl,kw", [("bsr", i, kw) for i, kw in BSR_IMPLS] + [
    ("nm", i, {}) for i in NM_IMPLS], ids=[f"bsr_{i}" for i in BSR_IDS] + [
        f"nm_{i}" for i in NM_IMPLS])
def test_float64_is_accumulated_in_float64(fmt, impl, kw):
  """Under x64 every impl keeps float64 precision (the Pallas kernels summed in float32)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(13)
    K, N, B = 32, 16, 8
    w = rng.standard_normal((K, N))
    x = rng.standard_normal((B, K)) + 1e6  # terms far apart: float32 sums lose ~0.1
    if fmt == "nm":
      mask = np.asarray(masks.n_by_m(w, 2, 4, axis=0))
      y = spk.nm_matmul(x, spk.NMSparse.from_dense(jnp.asarray(w), mask, 2, 4), impl=impl)
    else:
      mask = _block_mask(rng, (K, N), (8, 8), 0.5, empty_col=0)
      y = spk.bsr_matmul(x, spk.BlockSparse.from_dense(jnp.asarray(w), mask, (8, 8)), impl=impl,
                         **kw)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), x @ np.where(mask, w, 0), rtol=0, atol=1e-8)


@pytest.mark.parametrize("impl", NM_IMPLS)
@pytest.mark.parametrize("axis", [0, 1])
def test_nm_gradients_match_dense(impl, axis):
  rng = np.random.default_rng(11)
  K, N, B = 32, 32, 8
  w = _rand(rng, (K, N))
  x = _rand(rng, (B, K))
  mask = np.array(masks.n_by_m(w, 2, 4, axis=axis)) & (rng.random((K, N)) < 0.7)
  f = spk.NMSparse.from_dense(w, mask, 2, 4, axis=axis)

  def sparse_loss(x, values):
    return jnp.sum(jnp.sin(spk.nm_matmul(x, f.with_values(values), impl=impl)))

  def dense_loss(x, w):
    return jnp.sum(jnp.sin(x @ jnp.where(mask, w, 0)))

  gx, gv = jax.jit(jax.grad(sparse_loss, argnums=(0, 1)))(x, f.values)
  ex, ew = jax.jit(jax.grad(dense_loss, argnums=(0, 1)))(x, w)
  _close(gx, ex)
  _close(f.with_values(gv).to_dense(), ew)
  # Unused slots (index m) get exactly zero gradient: they stay zero under training.
  assert np.all(np.asarray(gv)[np.asarray(f.indices) == 4] == 0)


def test_nm_errors_and_leading_dims():
  rng = np.random.default_rng(12)
  w = rng.standard_normal((16, 8)).astype(np.float32)
  f = spk.NMSparse.from_dense(w, np.asarray(masks.n_by_m(w, 2, 4, axis=0)), 2, 4)
  x = rng.standard_normal((2, 5, 16)).astype(np.float32)
  y = spk.nm_matmul(x, f)
  _close(y, x @ np.asarray(f.to_dense()))
  with pytest.raises(ValueError, match="K = 16"):
    spk.nm_matmul(np.ones((3, 8), np.float32), f)
  with pytest.raises(TypeError, match="NMSparse"):
    spk.nm_matmul(x, w)
  bad = spk.NMSparse(f.values[:, :2], f.indices[:, :2], f.shape, f.n, f.m, f.axis)
  with pytest.raises(ValueError, match="values must have shape"):
    spk.nm_matmul(x, bad)


@pytest.mark.parametrize("backend,bs,expected", [
    ("gpu", (16, 16), "indexed"), ("gpu", (8, 8), "xla"), ("gpu", (32, 24), "xla"),
    ("tpu", (128, 128), "prefetch"), ("tpu", (32, 32), "xla"), ("cpu", (128, 128), "xla"),
])
def test_auto_dispatch_per_backend(monkeypatch, backend, bs, expected):
  # Which implementation "auto" picks on each backend (the kernels are stubbed out).
  rng = np.random.default_rng(14)
  K, N = 2 * bs[0], 2 * bs[1]
  w = rng.standard_normal((K, N)).astype(np.float32)
  mask = np.zeros((K, N), bool)
  mask[:bs[0], :bs[1]] = True                    # 1 of 4 blocks: sparse enough for "xla" on a CPU
  f = spk.BlockSparse.from_dense(w, mask, bs)
  picked = []
  monkeypatch.setattr(bsr_mod._common, "backend", lambda: backend)  # pylint: disable=protected-access
  for name in ("prefetch", "indexed"):
    def stub(x2, data, indices, st, dtype, name=name):
      picked.append((name, st.interpret))
      return jnp.zeros((x2.shape[0], st.shape[1]), dtype)
    monkeypatch.setattr(bsr_mod, f"_pallas_{name}", stub)
  real = cpu_mod.bsr_matmul_xla
  monkeypatch.setattr(cpu_mod, "bsr_matmul_xla",
                      lambda *a, **k: picked.append(("xla", None)) or real(*a, **k))
  spk.bsr_matmul(np.ones((4, K), np.float32), f)
  assert picked[0][0] == expected
  if expected != "xla":
    assert picked[0][1] is False   # compiled, not interpreted, on an accelerator


def test_pallas_variants_resolve_on_cpu():
  # On a CPU, interpret defaults to True and "auto" never picks Pallas.
  assert bsr_mod._common.resolve_interpret(None) is True  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="interpret"):
    bsr_mod._common.resolve_interpret("yes")  # pylint: disable=protected-access
  st = nm_mod._Static((64, 64), 2, 4, 0, "auto", True, None)  # pylint: disable=protected-access
  assert nm_mod._gpu_ok(st) and not nm_mod._gpu_ok(st._replace(shape=(24, 64)))  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# Edge cases: empty batches, bad hand-built indices, extreme magnitudes.


def test_empty_batch_gives_empty_output_on_every_impl():
  rng = np.random.default_rng(7)
  w = jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)
  bs = spk.BlockSparse.from_dense(w, masks.block(w, 0.9, (16, 16)), (16, 16))
  nm = spk.NMSparse.from_dense(w, np.asarray(masks.n_by_m(w, 2, 4, axis=0)), 2, 4, axis=0)
  x = jnp.zeros((0, 64), jnp.float32)
  for impl in ("auto", "xla", "dense", "reference"):
    assert spk.bsr_matmul(x, bs, impl=impl).shape == (0, 64)
  for impl in ("auto", "xla", "pallas", "reference"):
    assert spk.nm_matmul(x, nm, impl=impl, interpret=True).shape == (0, 64)
  assert spk.bsr_matmul(jnp.zeros((3, 0, 64)), bs).shape == (3, 0, 64)


def test_hand_built_block_indices_are_checked():
  rng = np.random.default_rng(8)
  w = jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)
  bs = spk.BlockSparse.from_dense(w, masks.block(w, 0.5, (16, 16)), (16, 16))
  x = jnp.asarray(rng.standard_normal((4, 64)), jnp.float32)
  out_of_range = spk.BlockSparse(bs.data, bs.indices.at[0].set(7), bs.shape, bs.block_shape,
                                 bs.counts)
  with pytest.raises(ValueError, match=r"indices must be row-block indices in \[0, K // bk = 4\)"):
    spk.bsr_matmul(x, out_of_range)
  j = int(np.argmax(np.asarray(bs.counts) >= 2))  # an output block with two stored blocks
  start = int(bs.indptr[j])
  repeated = spk.BlockSparse(bs.data, bs.indices.at[start + 1].set(bs.indices[start]),
                             bs.shape, bs.block_shape, bs.counts)
  with pytest.raises(ValueError, match="strictly ascending within each output block"):
    repeated.to_dense()
  # A valid layout passes, and under jit (traced indices) nothing is synced.
  np.testing.assert_allclose(jax.jit(spk.bsr_matmul)(x, bs), x @ bs.to_dense(), rtol=1e-5,
                             atol=1e-5)
  bal = spk.BalancedBlockSparse.from_dense(
      w, np.asarray(spk.balanced_block_mask(w, 0.5, (16, 16))), (16, 16))
  with pytest.raises(ValueError, match="strictly ascending"):
    spk.BalancedBlockSparse(bal.data, bal.indices[:, ::-1], bal.shape, bal.block_shape).check()


def test_balanced_block_mask_l2_on_extreme_magnitudes():
  # Squared block norms of 1e20 overflow float32; scores must still rank the blocks.
  for scale in (1e20, 1e-25):
    w = jnp.asarray(np.kron(np.array([[1.0], [3.0], [2.0], [4.0]]), np.ones((4, 8))) * scale,
                    jnp.float32)  # (16, 8): four row blocks of (4, 8)
    keep = np.asarray(spk.balanced_block_mask(w, 0.5, (4, 8)))
    np.testing.assert_array_equal(keep[::4, 0], [False, True, False, True])
