"""Tests for sparsejax.prox: brute-force minimisation, closed forms, optimality."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sparsejax import prox

# ---------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------


def _pen(name, z, a=None):
  az = np.abs(z)
  if name == "l1":
    return az
  if name == "l0":
    return (z != 0).astype(np.float64)
  if name == "lhalf":
    return np.sqrt(az)
  if name == "tl1":
    return (a + 1.0) * az / (a + az)
  raise AssertionError(name)


def _threshold(name, lam, a=None):
  if name == "l1":
    return lam
  if name == "l0":
    return np.sqrt(2.0 * lam)
  if name == "lhalf":
    return 1.5 * lam ** (2.0 / 3.0)
  if name == "tl1":
    return np.where(lam <= a * a / (2 * (a + 1)), lam * (a + 1) / a,
                    np.sqrt(2 * lam * (a + 1)) - a / 2)
  raise AssertionError(name)


def _apply(name, x, lam, a=None):
  if name == "tl1":
    return prox.tl1(x, lam, a)
  return getattr(prox, name)(x, lam)


def _brute_1d(name, x, lam, a, n=200_001):
  """Grid minimiser of 0.5 (z - x)^2 + lam r(z), row-wise; z = 0 included."""
  t = np.linspace(0.0, 1.0, n)
  lo = np.minimum(0.0, x) - 0.1
  hi = np.maximum(0.0, x) + 0.1
  z = lo[:, None] + (hi - lo)[:, None] * t[None, :]
  z = np.concatenate([z, np.zeros((len(x), 1))], axis=1)
  f = 0.5 * (z - x[:, None]) ** 2 + lam[:, None] * _pen(
      name, z, None if a is None else a[:, None])
  i = np.argmin(f, axis=1)
  rows = np.arange(len(x))
  return z[rows, i], f[rows, i], (hi - lo) / (n - 1)


def _group_ref(x, lam, axis):
  """Per-group loop: z_g = max(1 - lam_g / ||x_g||, 0) x_g."""
  xm = np.moveaxis(np.asarray(x, np.float64), axis, 0)
  lam = np.broadcast_to(lam, (xm.shape[0],))
  out = np.zeros_like(xm)
  for g in range(xm.shape[0]):
    n = np.linalg.norm(xm[g])
    if n > lam[g]:
      out[g] = (1 - lam[g] / n) * xm[g]
  return np.moveaxis(out, 0, axis)


def _groups(x, axis):
  xm = np.moveaxis(np.asarray(x, np.float64), axis, 0)
  return xm.reshape(xm.shape[0], -1)


# ---------------------------------------------------------------------------
# Elementwise maps: brute force
# ---------------------------------------------------------------------------

MAPS = ["l1", "l0", "lhalf", "tl1"]


def _samples(name, seed):
  rng = np.random.default_rng(seed)
  n = 48
  lam = np.exp(rng.uniform(np.log(1e-3), np.log(3.0), n))
  a = np.exp(rng.uniform(np.log(0.05), np.log(20.0), n))
  x = rng.uniform(-5, 5, n)
  # Values near the threshold (1e-3 relative away from it, both sides).
  t = _threshold(name, lam, a)
  near = np.sign(rng.uniform(-1, 1, n)) * t * np.where(
      rng.uniform(size=n) < 0.5, 1 - 1e-3, 1 + 1e-3)
  x = np.where(np.arange(n) % 2 == 0, x, near)
  x = x.astype(np.float32).astype(np.float64)  # exactly what the map sees.
  return x, lam, a


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("seed", [0, 1])
def test_elementwise_matches_brute_force(name, seed):
  x, lam, a = _samples(name, seed)
  z = np.asarray(_apply(name, jnp.asarray(x, jnp.float32),
                        jnp.asarray(lam, jnp.float32),
                        jnp.asarray(a, jnp.float32)), np.float64)
  lam32 = lam.astype(np.float32).astype(np.float64)
  a32 = a.astype(np.float32).astype(np.float64)
  zb, fb, h = _brute_1d(name, x, lam32, a32)
  f = 0.5 * (z - x) ** 2 + lam32 * _pen(name, z, a32)
  np.testing.assert_array_less(f, fb + 1e-8 * (1 + x ** 2))
  np.testing.assert_array_less(np.abs(z - zb), 2 * h + 1e-5 * (1 + np.abs(x)))
  # Returned values are exact zeros or on the same side as x.
  assert np.all((z == 0) | (np.sign(z) == np.sign(x)))


@pytest.mark.parametrize("name,lam,a", [
    ("l0", 0.7, None), ("lhalf", 0.7, None), ("lhalf", 2.0, None),
    ("tl1", 2.0, 1.0),  # lam > a^2/(2(a+1)): the map jumps at t.
    ("tl1", 0.5, 0.2),
])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_jump_branch_at_threshold(name, lam, a, sign):
  """Just below the tie: 0. Just above: nonzero with objective <= f(0)."""
  t = float(_threshold(name, np.float64(lam), a))
  below = sign * t * (1 - 1e-4)
  above = sign * t * (1 + 1e-4)
  z_below = float(_apply(name, jnp.float32(below), lam, a))
  z_above = float(_apply(name, jnp.float32(above), lam, a))
  assert z_below == 0.0
  assert z_above != 0.0 and np.sign(z_above) == sign
  x = float(np.float32(above))
  f_above = 0.5 * (z_above - x) ** 2 + lam * _pen(name, np.float64(z_above), a)
  f_zero = 0.5 * x ** 2
  assert f_above <= f_zero + 1e-6
  assert f_zero - f_above < 1e-2 * f_zero  # a near-tie: both branches close.


def test_l0_tie_returns_zero():
  # sqrt(2 * 2) = 2 exactly: the tie |x| = sqrt(2 lam) gives 0.
  up = np.nextafter(np.float32(2.0), np.float32(3.0))  # one ulp above 2.
  x = np.array([-2.0, 2.0, up, -up], np.float32)
  np.testing.assert_array_equal(prox.l0(x, 2.0), [0.0, 0.0, up, -up])


@pytest.mark.parametrize("name,x,lam,a,expected", [
    ("l1", [-3.0, -1.0, 0.5, 2.5], 1.0, None, [-2.0, 0.0, 0.0, 1.5]),
    ("l0", [-3.0, -1.0, 0.5, 2.5], 2.0, None, [-3.0, 0.0, 0.0, 2.5]),
    # lhalf at lam = 8: threshold t = 1.5 * 8^(2/3) = 6.
    ("lhalf", [0.0, 5.9, -6.1], 8.0, None, None),
    ("tl1", [0.0, 0.3, -5.0], 0.1, 1.0, None),
])
def test_small_closed_form_values(name, x, lam, a, expected):
  z = np.asarray(_apply(name, jnp.asarray(x, jnp.float32), lam, a))
  if expected is None:  # evaluate the paper's formula directly in float64.
    x = np.asarray(x, np.float64)
    ax = np.abs(x)
    if name == "lhalf":
      phi = np.arccos(lam / 4 * (np.maximum(ax, 1e-30) / 3) ** -1.5 * (ax > 0)
                      + (ax == 0))
      expected = np.where(ax > 1.5 * lam ** (2 / 3), 2 / 3 * x * (
          1 + np.cos(2 * np.pi / 3 - 2 / 3 * phi)), 0.0)
    else:
      phi = np.arccos(np.clip(1 - 27 * lam * a * (a + 1) / (2 * (a + ax) ** 3),
                              -1, 1))
      expected = np.where(ax > _threshold("tl1", lam, a), np.sign(x) * (
          2 / 3 * (a + ax) * np.cos(phi / 3) - 2 * a / 3 + ax / 3), 0.0)
  np.testing.assert_allclose(z, expected, rtol=2e-6, atol=1e-6)


def _paper_formula(name, x, lam, a):
  """The trigonometric closed forms as printed (Xu et al.; Zhang & Xin), float64."""
  ax = np.abs(x)
  if name == "lhalf":
    keep = ax > 1.5 * lam ** (2 / 3)
    phi = np.arccos(np.clip(lam / 4 * (np.where(keep, ax, 1.0) / 3) ** -1.5, -1, 1))
    return np.where(keep, 2 / 3 * x * (1 + np.cos(2 * np.pi / 3 - 2 / 3 * phi)), 0.0)
  phi = np.arccos(np.clip(1 - 27 * lam * a * (a + 1) / (2 * (a + ax) ** 3), -1, 1))
  return np.where(ax > _threshold("tl1", lam, a), np.sign(x) * (
      2 / 3 * (a + ax) * np.cos(phi / 3) - 2 * a / 3 + ax / 3), 0.0)


@pytest.mark.parametrize("name,lam,a", [
    ("lhalf", 1e-3, None), ("lhalf", 0.3, None), ("lhalf", 5.0, None),
    ("tl1", 0.01, 1.0), ("tl1", 2.0, 0.5),
    # lam = a^2 / (2(a+1)): the regime boundary, where the cubic behind the
    # closed form has a double root at the threshold.
    ("tl1", 0.25, 1.0), ("tl1", 0.25 * (1 + 1e-9), 1.0),
])
def test_newton_roots_match_trigonometric_closed_form_float64(name, lam, a):
  # The maps solve the closed forms' cubic by Newton steps; on a fine grid
  # (thresholds included) they must agree with the printed formulas to
  # float64 rounding, and to float32 rounding in float32.
  with jax.enable_x64(True):
    t = _threshold(name, lam, a)
    x = np.concatenate([np.linspace(-3 * t - 1, 3 * t + 1, 100001),
                        t * (1 + np.logspace(-15, 0, 400))])
    expected = _paper_formula(name, x, lam, a)
    z = np.asarray(_apply(name, jnp.asarray(x), lam, a))
    # At a double root a rounding of the input moves the root by ~sqrt(eps):
    # both forms are only that accurate there (z itself is ~1e-8 at x ~ t).
    double_root = name == "tl1" and abs(lam - a * a / (2 * (a + 1))) < 1e-6
    atol = 1e-7 if double_root else 1e-12
    np.testing.assert_allclose(z, expected, rtol=1e-12, atol=atol)
  x32 = x.astype(np.float32)
  keep = np.abs(np.abs(x32.astype(np.float64)) - t) > 1e-5 * (t + 1)  # away from the jump
  z32 = np.asarray(_apply(name, jnp.asarray(x32), lam, a), np.float64)
  expected32 = _paper_formula(name, x32.astype(np.float64), lam, a)
  atol32 = 2e-5 if double_root else 2e-6  # sqrt(float32 eps) conditioning, as above
  np.testing.assert_allclose(z32[keep], expected32[keep], rtol=2e-6, atol=atol32)


@pytest.mark.parametrize("lam,a", [(1e-6, 10.0), (1e-6, 1.0), (1e-4, 100.0), (1e-3, 1.0)])
def test_tl1_float32_small_lambda_accuracy(lam, a):
  """Small lam or large a: the cubic's root is ~k/3, tiny; float32 must keep it to rounding.

  z is compared with the same map in float64: the error may be a few float32 roundings of
  |x| (the cancellation near the threshold, where z -> 0, is inherent), not more, and the
  sign must never flip.
  """
  t = float(_threshold("tl1", lam, a))
  x = (t * np.concatenate([1 + np.logspace(-4, 1, 300), -(1 + np.logspace(-4, 1, 300))]))
  x32 = x.astype(np.float32)
  z32 = np.asarray(prox.tl1(jnp.asarray(x32), lam, a), np.float64)
  with jax.enable_x64(True):
    z64 = np.asarray(prox.tl1(jnp.asarray(x32.astype(np.float64)), lam, a))
  eps = float(np.finfo(np.float32).eps)
  np.testing.assert_array_less(np.abs(z32 - z64), 4 * eps * np.abs(x32) + 1e-30)
  clear = np.abs(z64) > 4 * eps * np.abs(x32)
  assert np.all(np.sign(z32[clear]) == np.sign(x32[clear]))


def test_l1_subgradient_inclusion():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(50,)) * 2
  lam = rng.uniform(0.1, 1.5, size=(50,))
  z = np.asarray(prox.l1(x.astype(np.float32), lam.astype(np.float32)),
                 np.float64)
  lam = lam.astype(np.float32).astype(np.float64)
  x = x.astype(np.float32).astype(np.float64)
  r = x - z  # must lie in lam * d|z|.
  nz = z != 0
  np.testing.assert_allclose(r[nz], lam[nz] * np.sign(z[nz]), atol=1e-6)
  assert np.all(np.abs(r[~nz]) <= lam[~nz] + 1e-7)
  assert nz.any() and (~nz).any()


@pytest.mark.parametrize("name", MAPS)
def test_lam_zero_is_identity_and_large_lam_is_zero(name):
  x = jnp.array([-3.0, -0.2, 0.0, 0.7, 4.0])
  np.testing.assert_allclose(_apply(name, x, 0.0, 1.0), x, rtol=1e-6)
  np.testing.assert_array_equal(_apply(name, x, 100.0, 1.0), np.zeros(5))


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_elementwise_gradients(name, lam):
  with jax.enable_x64(True):
    # Points away from the thresholds (and the tl1 regime switch) plus x = 0.
    x = jnp.asarray([0.0, -0.3, 0.05, 2.0, -3.5], jnp.float64)
    f = lambda v: _apply(name, v, lam, 1.0)
    g = jax.vmap(jax.grad(f))(x)
    assert np.all(np.isfinite(g))
    if name in ("l1", "l0"):  # slope 1 on kept entries, 0 on zeroed ones.
      np.testing.assert_array_equal(g, np.asarray(f(x)) != 0)
    check_grads(f, (x[1:],), order=1, modes=("rev",), eps=1e-5)


# ---------------------------------------------------------------------------
# lam broadcasting, jit, vmap, dtypes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("lam_shape", [(6,), (4, 1), (4, 6)])
def test_lam_broadcast_matches_scalar_loop(name, lam_shape):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(4, 6)).astype(np.float32) * 2
  lam = rng.uniform(0.05, 1.5, size=lam_shape).astype(np.float32)
  z = np.asarray(_apply(name, x, lam, 0.5))
  lam_full = np.broadcast_to(lam, x.shape)
  for i, j in itertools.product(range(4), range(6)):
    zij = float(_apply(name, x[i, j], lam_full[i, j], 0.5))
    np.testing.assert_allclose(z[i, j], zij, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", MAPS)
def test_zero_strength_is_the_identity(name):
  x = jnp.asarray([-3.0, -1e-30, 0.0, 1e-20, 0.7, 2.0], jnp.float32)
  np.testing.assert_array_equal(_apply(name, x, 0.0, 0.5), x)


def test_lhalf_is_scale_equivariant_at_tiny_scale():
  """lhalf(c x, c^(3/2) lam) = c lhalf(x, lam): z = c u turns the objective into c^2 times the
  one at (x, lam). At c = 1e-20 in float32 both |x|^3 and lam^2 underflow, which must not
  decide the threshold (every entry used to come out 0)."""
  rng = np.random.default_rng(11)
  lam = 0.5
  x = np.concatenate([rng.uniform(-4, 4, 64), [1.5 * lam ** (2 / 3) * 1.01]])
  ref = np.asarray(prox.lhalf(jnp.asarray(x, jnp.float32), lam))
  assert np.count_nonzero(ref) > 20
  c = 1e-20
  tiny = np.asarray(prox.lhalf(jnp.asarray(c * x, jnp.float32), c ** 1.5 * lam))
  np.testing.assert_allclose(tiny / c, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MAPS)
def test_jit_and_vmap_agree(name):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(5, 7)) * 2, jnp.float32)
  lam = jnp.asarray(rng.uniform(0.05, 1.5, size=(5,)), jnp.float32)
  ref = _apply(name, x, lam[:, None], 0.5)
  jitted = jax.jit(lambda x, l: _apply(name, x, l, 0.5))(x, lam[:, None])
  vmapped = jax.vmap(lambda x, l: _apply(name, x, l, 0.5))(x, lam)
  np.testing.assert_allclose(jitted, ref, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(vmapped, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", MAPS + ["group_l2"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_computes_in_f32(name, dtype):
  rng = np.random.default_rng(6)
  x_full = rng.normal(size=(8, 5)) * 2
  x = jnp.asarray(x_full, dtype)
  f = ((lambda x: prox.group_l2(x, 0.9)) if name == "group_l2"
       else (lambda x: _apply(name, x, 0.3, 0.5)))
  z = f(x)
  assert z.dtype == dtype
  # Same as the float32 computation on the upcast input, rounded back.
  z32 = f(x.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(z, np.float32),
                                np.asarray(z32.astype(dtype), np.float32))
  # And close to the float32 computation on the unrounded input.
  eps = float(jnp.finfo(dtype).eps)
  z_exact = f(jnp.asarray(x_full, jnp.float32))
  np.testing.assert_allclose(np.asarray(z, np.float32), z_exact, rtol=2 * eps,
                             atol=4 * eps)


def test_float64_stays_float64():
  with jax.enable_x64(True):
    x = jnp.asarray([-3.0, 0.1, 2.0], jnp.float64)
    for name in MAPS:
      assert _apply(name, x, 0.5, 1.0).dtype == jnp.float64
    z = prox.l1(x, 0.5)
    np.testing.assert_array_equal(z, [-2.5, 0.0, 1.5])
    assert prox.nuclear(jnp.eye(3, dtype=jnp.float64), 0.5).dtype == jnp.float64


# ---------------------------------------------------------------------------
# group_l2
# ---------------------------------------------------------------------------


def _group_input(shape, axis, seed):
  """Random x whose groups straddle lam = 1: some below, some above."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape)
  xm = np.moveaxis(x, axis, 0)
  norms = np.linalg.norm(xm.reshape(xm.shape[0], -1), axis=1)
  target = np.linspace(0.3, 3.0, xm.shape[0])
  xm = xm / norms.reshape((-1,) + (1,) * (x.ndim - 1)) * target.reshape(
      (-1,) + (1,) * (x.ndim - 1))
  return np.moveaxis(xm, 0, axis).astype(np.float32)


@pytest.mark.parametrize("shape,axis", [
    ((5, 7), -1), ((5, 7), 0), ((3, 3, 4, 6), -1), ((3, 3, 4, 6), 0),
    ((3, 3, 4, 6), 2), ((9,), 0),
])
@pytest.mark.parametrize("per_group", [False, True])
def test_group_l2_matches_per_group_reference(shape, axis, per_group):
  x = _group_input(shape, axis, seed=7)
  num_groups = shape[axis]
  lam = (np.linspace(0.8, 1.2, num_groups).astype(np.float32) if per_group
         else np.float32(1.0))
  z = np.asarray(prox.group_l2(x, lam, axis=axis))
  ref = _group_ref(x, lam, axis % len(shape))
  np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-6)
  zero = np.all(_groups(ref, axis % len(shape)) == 0, axis=1)
  assert zero.any() and (~zero).any()
  assert np.all(_groups(z, axis % len(shape))[zero] == 0)  # exact zeros.


@pytest.mark.parametrize("shape,axis", [((6, 5), 0), ((3, 3, 4, 6), -1)])
def test_group_l2_optimality(shape, axis):
  x = _group_input(shape, axis, seed=8)
  lam = 1.0
  z = np.asarray(prox.group_l2(x, lam, axis=axis), np.float64)
  xg, zg = _groups(x, axis), _groups(z, axis)
  for xv, zv in zip(xg, zg):
    nz = np.linalg.norm(zv)
    if nz > 0:  # x - z = lam z / ||z||
      np.testing.assert_allclose(xv - zv, lam * zv / nz, atol=2e-6)
    else:
      assert np.linalg.norm(xv) <= lam + 1e-6


def test_group_l2_zero_group_no_nan_and_gradients():
  x = np.zeros((3, 4), np.float32)
  x[:, 1] = [0.1, 0.2, 0.1]  # norm < lam
  x[:, 2] = [1.0, 2.0, -2.0]  # norm 3 > lam; column 0 and 3 exactly zero
  g = jax.grad(lambda x: jnp.sum(prox.group_l2(x, 1.0) ** 2))(jnp.asarray(x))
  assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(g[:, [0, 1, 3]], 0.0)
  # d/dx sum(z^2) for z = (1 - lam/n) x is 2 (1 - lam/n) x (n>lam, scale-only).
  np.testing.assert_allclose(g[:, 2], 2 * (1 - 1 / 3) * x[:, 2], rtol=1e-5)
  with jax.enable_x64(True):
    x64 = jnp.asarray(x, jnp.float64)
    check_grads(lambda v: prox.group_l2(v, 1.0), (x64,), order=1,
                modes=("fwd", "rev"), eps=1e-4)
    # lam = 0 is the identity, so the gradient of the sum is exactly one everywhere
    # (no NaN from the zero group's norm).
    g0 = jax.grad(lambda v: jnp.sum(prox.group_l2(v, 0.0)))(x64)
    np.testing.assert_array_equal(np.asarray(g0), 1.0)


# ---------------------------------------------------------------------------
# nuclear
# ---------------------------------------------------------------------------


def _nuc_obj(z, w, lam):
  return 0.5 * np.sum((z - w) ** 2) + lam * np.linalg.svd(z, compute_uv=False).sum()


@pytest.mark.parametrize("shape", [(6, 4), (3, 7)])
def test_nuclear_matches_numpy_and_is_optimal(shape):
  rng = np.random.default_rng(9)
  w = rng.normal(size=shape).astype(np.float32)
  s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
  lam = float((s[1] + s[2]) / 2)  # keeps exactly two singular values.
  z = np.asarray(prox.nuclear(w, lam), np.float64)
  u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
  ref = (u * np.maximum(s - lam, 0)) @ vt
  np.testing.assert_allclose(z, ref, atol=2e-5)
  assert np.linalg.matrix_rank(z, tol=1e-4) == 2
  f0 = _nuc_obj(z, w, lam)
  for _ in range(20):
    d = rng.normal(size=shape)
    d *= 1e-2 / np.linalg.norm(d)
    assert _nuc_obj(z + d, w, lam) > f0


def test_nuclear_jit_and_vmap():
  rng = np.random.default_rng(10)
  w = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  ref = np.stack([np.asarray(prox.nuclear(wi, 0.7)) for wi in w])
  np.testing.assert_allclose(jax.vmap(lambda m: prox.nuclear(m, 0.7))(w), ref,
                             atol=1e-5)
  np.testing.assert_allclose(jax.jit(prox.nuclear)(w[0], 0.7), ref[0], atol=1e-5)


def _svt_numpy(w, lam):
  u, s, vt = np.linalg.svd(w, full_matrices=False)
  return (u * np.maximum(s - lam, 0)) @ vt


def _nuclear_cases():
  rng = np.random.default_rng(12)
  q6, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  q4, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  return {
      "generic 6x4": rng.normal(size=(6, 4)),
      "generic 3x5": rng.normal(size=(3, 5)),
      "zero": np.zeros((4, 3)),
      "identity": np.eye(3),
      "repeated above and below lam": q6[:, :4] @ np.diag([2.0, 2.0, 0.1, 0.1]) @ q4,
      "rank 2 of 6x4": rng.normal(size=(6, 2)) @ rng.normal(size=(2, 4)),
  }


@pytest.mark.parametrize("case", list(_nuclear_cases()))
def test_nuclear_derivative_matches_finite_differences(case):
  """JVP in w and lam against central differences, also where SVD's own gradient is NaN."""
  w = _nuclear_cases()[case]
  lam, h = 0.5, 1e-6
  rng = np.random.default_rng(13)
  with jax.enable_x64(True):
    for _ in range(3):
      dw = rng.normal(size=w.shape)
      dlam = float(rng.normal())
      _, jvp = jax.jvp(prox.nuclear, (jnp.asarray(w), jnp.float64(lam)),
                       (jnp.asarray(dw), jnp.float64(dlam)))
      fd = (_svt_numpy(w + h * dw, lam + h * dlam) - _svt_numpy(w - h * dw, lam - h * dlam)) / (
          2 * h)
      np.testing.assert_allclose(np.asarray(jvp), fd, atol=1e-6)
    grad = jax.grad(lambda m: jnp.sum(prox.nuclear(m, lam) ** 2))(jnp.asarray(w, jnp.float32))
    assert np.isfinite(np.asarray(grad)).all()


# ---------------------------------------------------------------------------
# sparse_group
# ---------------------------------------------------------------------------


def _sg_obj(z, x, lam, mu, kind):
  """Objective for one group (vectors)."""
  return (0.5 * np.sum((z - x) ** 2) + lam * np.sum(_pen(kind, z))
          + mu * np.linalg.norm(z))


def _grid_2d(x, lam, mu, kind, n=1201):
  """Fine 2-D grid (with the axes z_i = 0 added) minimiser for a size-2 group."""
  axes = []
  for xi in x:
    g = np.linspace(min(0, xi) - 0.05, max(0, xi) + 0.05, n)
    axes.append(np.append(g, 0.0))
  z0, z1 = np.meshgrid(*axes, indexing="ij")
  f = 0.5 * ((z0 - x[0]) ** 2 + (z1 - x[1]) ** 2) + lam * (
      _pen(kind, z0) + _pen(kind, z1)) + mu * np.sqrt(z0 ** 2 + z1 ** 2)
  i = np.unravel_index(np.argmin(f), f.shape)
  h = max((abs(xi) + 0.1) / (n - 1) for xi in x)
  return np.array([z0[i], z1[i]]), f[i], h


@pytest.mark.parametrize("kind", ["l1", "l0"])
def test_sparse_group_size2_matches_2d_grid(kind):
  rng = np.random.default_rng(11)
  num = 12
  x = (rng.normal(size=(2, num)) * 2).astype(np.float32)
  lam = np.float32(0.4)
  mu = np.linspace(0.1, 2.5, num).astype(np.float32)  # per group
  z = np.asarray(prox.sparse_group(x, lam, mu, kind=kind, axis=-1), np.float64)
  x = x.astype(np.float64)
  nonzero = 0
  for g in range(num):
    zb, fb, h = _grid_2d(x[:, g], float(lam), float(mu[g]), kind)
    f = _sg_obj(z[:, g], x[:, g], float(lam), float(mu[g]), kind)
    assert f <= fb + 1e-6, (g, z[:, g], zb)
    np.testing.assert_allclose(z[:, g], zb, atol=3 * h + 1e-5)
    nonzero += np.count_nonzero(z[:, g])
  assert 0 < nonzero < 2 * num


def test_sparse_group_l1_optimality_large_groups():
  rng = np.random.default_rng(12)
  x = rng.normal(size=(3, 3, 4, 8)).astype(np.float32) * 1.5
  lam = rng.uniform(0.2, 1.0, size=x.shape).astype(np.float32)  # elementwise
  mu = np.linspace(0.5, 8.0, 8).astype(np.float32)
  z = np.asarray(prox.sparse_group(x, lam, mu, kind="l1"), np.float64)
  np.testing.assert_allclose(
      z, np.asarray(prox.group_l2(prox.l1(x, lam), mu)), rtol=1e-6, atol=1e-7)
  xg, zg, lg = _groups(x, 3), _groups(z, 3), _groups(lam, 3)
  zero_groups = 0
  for xv, zv, lv, m in zip(xg, zg, lg, mu.astype(np.float64)):
    nz = np.linalg.norm(zv)
    if nz == 0:  # 0 in x - lam d|0| - mu B: ||soft(x, lam)|| <= mu
      zero_groups += 1
      soft = np.sign(xv) * np.maximum(np.abs(xv) - lv, 0)
      assert np.linalg.norm(soft) <= m + 1e-5
      continue
    r = xv - zv - m * zv / nz  # must lie in lam * d|z|
    on = zv != 0
    np.testing.assert_allclose(r[on], lv[on] * np.sign(zv[on]), atol=3e-6)
    assert np.all(np.abs(r[~on]) <= lv[~on] + 1e-6)
  assert 0 < zero_groups < 8


def _l0_group_brute(xv, lam, mu):
  """Enumerates all supports; each support's best z is the group shrink."""
  best_f, best_z = np.inf, None
  for mask in itertools.product([False, True], repeat=len(xv)):
    mask = np.array(mask)
    z = np.where(mask, xv, 0.0)
    n = np.linalg.norm(z)
    z = z * max(1 - mu / n, 0) if n > 0 else z
    f = _sg_obj(z, xv, lam, mu, "l0")
    if f < best_f - 1e-12:
      best_f, best_z = f, z
  return best_z, best_f


def test_sparse_group_l0_is_exact_against_support_enumeration():
  rng = np.random.default_rng(13)
  x = (rng.normal(size=(6, 5)) * 1.5).astype(np.float32)  # 6 groups of 5 (axis 0)
  lam = rng.uniform(0.05, 0.8, size=6).astype(np.float32)
  mu = rng.uniform(0.1, 2.5, size=6).astype(np.float32)
  z = np.asarray(prox.sparse_group(x, lam, mu, kind="l0", axis=0), np.float64)
  worse_composition = 0
  for g in range(6):
    xv = x[g].astype(np.float64)
    zb, fb = _l0_group_brute(xv, float(lam[g]), float(mu[g]))
    f = _sg_obj(z[g], xv, float(lam[g]), float(mu[g]), "l0")
    assert f <= fb + 1e-6
    np.testing.assert_allclose(z[g], zb, atol=1e-5)
    comp = np.asarray(prox.group_l2(prox.l0(x[g:g + 1], lam[g]), mu[g], axis=0))
    worse_composition += _sg_obj(comp[0], xv, float(lam[g]), float(mu[g]),
                                 "l0") > fb + 1e-6
  assert worse_composition > 0  # the composition is not the prox here.


def test_sparse_group_l0_hand_example_differs_from_composition():
  # x = (3, 1), lam = 0.45, mu = 2: composition keeps both entries (objective
  # 5.225), the exact prox keeps only the first: z = (1, 0), objective 4.95.
  x = jnp.array([3.0, 1.0])[:, None]
  z = prox.sparse_group(x, 0.45, 2.0, kind="l0")
  np.testing.assert_allclose(z[:, 0], [1.0, 0.0], atol=1e-6)
  comp = prox.group_l2(prox.l0(x, 0.45), 2.0)
  assert np.count_nonzero(comp) == 2


def test_sparse_group_special_cases():
  rng = np.random.default_rng(14)
  x = jnp.asarray(rng.normal(size=(4, 6)) * 2, jnp.float32)
  # mu = 0: elementwise maps; lam = 0: group_l2.
  for kind in ["l0", "l1", "lhalf", "tl1"]:
    np.testing.assert_allclose(
        prox.sparse_group(x, 0.5, 0.0, kind=kind, a=0.7),
        _apply(kind, x, 0.5, 0.7), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        prox.sparse_group(x, 0.0, 1.5, kind=kind, axis=0, a=0.7),
        prox.group_l2(x, 1.5, axis=0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["lhalf", "tl1"])
def test_sparse_group_nonconvex_is_documented_composition(kind):
  rng = np.random.default_rng(15)
  x = jnp.asarray(rng.normal(size=(3, 3, 2, 5)) * 2, jnp.float32)
  mu = jnp.linspace(0.5, 6.0, 5)
  z = prox.sparse_group(x, 0.3, mu, kind=kind, a=0.5)
  ref = prox.group_l2(_apply(kind, x, 0.3, 0.5), mu)
  np.testing.assert_allclose(z, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["l0", "l1", "tl1"])
def test_sparse_group_jit_vmap_bf16(kind):
  rng = np.random.default_rng(16)
  x = jnp.asarray(rng.normal(size=(2, 4, 3)) * 2, jnp.float32)
  f = lambda v: prox.sparse_group(v, 0.3, 1.0, kind=kind, a=0.5)
  ref = np.stack([np.asarray(f(v)) for v in x])
  np.testing.assert_allclose(jax.vmap(f)(x), ref, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.jit(f)(x[0]), ref[0], rtol=1e-6, atol=1e-7)
  xb = x.astype(jnp.bfloat16)
  zb = f(xb)
  assert zb.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(zb, np.float32),
                                np.asarray(f(xb.astype(jnp.float32)).astype(
                                    jnp.bfloat16), np.float32))


# ---------------------------------------------------------------------------
# Singular-value helpers
# ---------------------------------------------------------------------------


def _with_spectrum(s, m, n, seed):
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(m, len(s))))
  v, _ = np.linalg.qr(rng.normal(size=(n, len(s))))
  return (u * np.asarray(s)) @ v.T


# s = (4, 3, 2, 1): cumulative energy 16/30, 25/30, 29/30, 30/30
#                 = 0.533, 0.833, 0.967, 1.
@pytest.mark.parametrize("energy,expected", [
    (0.01, 1), (0.5, 1), (0.54, 2), (0.8, 2), (0.9, 3), (0.96, 3),
    (0.97, 4), (1.0, 4),
])
def test_energy_rank_hand_table(energy, expected):
  s = jnp.array([4.0, 3.0, 2.0, 1.0])
  assert prox.energy_rank(s, energy) == expected
  assert prox.energy_rank(s, energy).dtype == jnp.int32
  assert jax.jit(prox.energy_rank)(s, energy) == expected  # traced energy


def test_energy_rank_batched_zero_and_trailing_zeros():
  s = jnp.array([[4.0, 3.0, 2.0, 1.0], [1.0, 0.0, 0.0, 0.0],
                 [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]])
  np.testing.assert_array_equal(prox.energy_rank(s, 1.0), [4, 1, 0, 2])
  np.testing.assert_array_equal(prox.energy_rank(s, 0.5), [1, 1, 0, 1])


@pytest.mark.parametrize("energy,expected_r", [(0.5, 1), (0.9, 2), (0.99, 3),
                                               (1.0, 5)])
def test_truncate_svd_known_spectrum(energy, expected_r):
  s = np.array([5.0, 3.0, 1.0, 0.5, 0.1])
  # cumulative energy: 25, 34, 35, 35.25, 35.26 of 35.26
  w = _with_spectrum(s, 7, 6, seed=17).astype(np.float32)
  s_w = jnp.linalg.svd(w, compute_uv=False)
  assert prox.energy_rank(s_w, energy) == expected_r
  w_r, r = prox.truncate_svd(w, energy)
  assert r == expected_r and r.dtype == jnp.int32
  assert w_r.shape == w.shape and w_r.dtype == jnp.float32
  w_r = np.asarray(w_r, np.float64)
  assert np.linalg.matrix_rank(w_r, tol=1e-3) == expected_r
  u, sv, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
  best = (u[:, :expected_r] * sv[:expected_r]) @ vt[:expected_r]
  np.testing.assert_allclose(w_r, best, atol=2e-5)
  # Eckart-Young: squared error = discarded energy.
  np.testing.assert_allclose(np.sum((w_r - w) ** 2), np.sum(s[expected_r:] ** 2),
                             rtol=1e-3, atol=1e-6)
  w_j, r_j = jax.jit(prox.truncate_svd)(w, energy)
  assert r_j == expected_r
  np.testing.assert_allclose(w_j, w_r, atol=2e-5)


def test_svd_cut_rank():
  s = jnp.array([[5.0, 0.05, 0.049, 0.0], [0.2, 0.1, 0.06, 0.051]])
  np.testing.assert_array_equal(prox.svd_cut_rank(s, 0.05), [2, 4])
  np.testing.assert_array_equal(prox.svd_cut_rank(s, 0.0), [4, 4])
  assert prox.svd_cut_rank(s[0], 1.0).dtype == jnp.int32
  assert jax.jit(prox.svd_cut_rank)(s[0], 0.1) == 1


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

_X = np.ones((3, 4), np.float32)


@pytest.mark.parametrize("fn,match", [
    (lambda: prox.l1(_X, -0.1), "lam must be >= 0"),
    (lambda: prox.l0(_X, np.array([0.1, -1.0, 0.2, 0.3])), "lam must be >= 0"),
    (lambda: prox.lhalf(_X, float("nan")), "lam must be >= 0"),
    (lambda: prox.tl1(_X, -1.0, 1.0), "lam must be >= 0"),
    (lambda: prox.tl1(_X, 0.1, 0.0), "a must be > 0"),
    (lambda: prox.tl1(_X, 0.1, -2.0), "a must be > 0"),
    (lambda: prox.l1(_X, np.ones(3)), "lam must be a scalar or broadcastable"),
    (lambda: prox.l1(_X, np.ones((2, 3, 4))), "lam must be a scalar or broadcastable"),
    (lambda: prox.group_l2(_X, -1.0), "lam must be >= 0"),
    (lambda: prox.group_l2(_X, np.ones(3)), "lam must be a scalar, a vector of length 4"),
    (lambda: prox.group_l2(_X, 1.0, axis=2), "axis must be in"),
    (lambda: prox.nuclear(np.ones((2, 3, 4), np.float32), 0.1), "w must be a 2-D"),
    (lambda: prox.nuclear(_X, -0.1), "lam must be >= 0"),
    (lambda: prox.nuclear(_X, np.ones(2)), "lam must be a scalar"),
    (lambda: prox.sparse_group(_X, 0.1, 0.1, kind="l2"), "kind must be one of"),
    (lambda: prox.sparse_group(_X, 0.1, -0.1), "mu must be >= 0"),
    (lambda: prox.sparse_group(_X, -0.1, 0.1), "lam must be >= 0"),
    (lambda: prox.sparse_group(_X, 0.1, 0.1, kind="tl1", a=0.0), "a must be > 0"),
    (lambda: prox.sparse_group(_X, np.ones((3, 4)), 0.1, kind="l0"),
     "lam must be a scalar, a vector of length 4"),
    (lambda: prox.energy_rank(jnp.ones(3), 0.0), r"energy must be in \(0, 1\]"),
    (lambda: prox.energy_rank(jnp.ones(3), 1.5), r"energy must be in \(0, 1\]"),
    (lambda: prox.truncate_svd(_X, -0.2), r"energy must be in \(0, 1\]"),
    (lambda: prox.truncate_svd(np.ones(3, np.float32), 0.9), "w must be a 2-D"),
    (lambda: prox.svd_cut_rank(jnp.ones(3), -0.05), "cut must be >= 0"),
])
def test_bad_input_raises_value_error(fn, match):
  with pytest.raises(ValueError, match=match):
    fn()


@pytest.mark.parametrize("fn,match", [
    (lambda: prox.l1(np.ones(3, np.int32), 0.1), "x must have a real floating"),
    (lambda: prox.group_l2(_X, 0.1, axis=1.0), "axis must be an int"),
])
def test_bad_types_raise_type_error(fn, match):
  with pytest.raises(TypeError, match=match):
    fn()


def test_traced_lam_is_not_checked_but_works():
  # Under jit lam is a tracer: no host sync, the map still computes.
  z = jax.jit(prox.l1)(jnp.array([2.0, -0.3]), jnp.float32(0.5))
  np.testing.assert_array_equal(z, [1.5, 0.0])


@pytest.mark.parametrize("name", ["l1", "l0", "lhalf", "tl1"])
def test_nan_stays_nan_and_infinity_stays_infinite(name):
  """A diverged weight must not come back as a clean 0 (nor inf as NaN)."""
  x = jnp.asarray([np.nan, np.inf, -np.inf, 0.0], jnp.float32)
  for lam in (0.0, 0.1):
    z = np.asarray(_apply(name, x, lam, 1.0))
    assert np.isnan(z[0])
    np.testing.assert_array_equal(z[1:], [np.inf, -np.inf, 0.0])


@pytest.mark.parametrize("kind", ["l0", "l1", "tl1", "lhalf"])
def test_sparse_group_keeps_nan(kind):
  """Every kind returns a NaN entry as NaN (l0's exact map sorted it last and zeroed it)."""
  x = jnp.asarray([[np.nan, 1.0, 2.0], [0.5, np.nan, np.nan], [1.0, 2.0, 3.0]], jnp.float32)
  z = np.asarray(prox.sparse_group(x, 0.1, 0.1, kind=kind, axis=0))
  np.testing.assert_array_equal(np.isnan(z), np.isnan(np.asarray(x)))
  # The finite group is unaffected by its neighbours' NaN.
  ref = np.asarray(prox.sparse_group(x[2:], 0.1, 0.1, kind=kind, axis=0))
  np.testing.assert_array_equal(z[2:], ref)


@pytest.mark.parametrize("a", [1e13, 1e30])
def test_tl1_large_a_is_l1(a):
  """rho_a(z) = (a+1)|z|/(a+|z|) -> |z| as a grows; (a+|x|)^3 overflowed float32 at a ~ 7e12."""
  x = jnp.asarray(np.random.default_rng(14).uniform(-5, 5, 200), jnp.float32)
  for lam in (0.01, 1.0):
    np.testing.assert_allclose(prox.tl1(x, lam, a), prox.l1(x, lam), rtol=1e-5, atol=1e-6)
