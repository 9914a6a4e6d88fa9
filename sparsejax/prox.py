r"""Closed-form proximal maps and singular-value helpers.

Every map returns

.. math::

  \operatorname{prox}_{\lambda r}(x) = \arg\min_z \tfrac12 \|z - x\|^2
  + \lambda\, r(z)

for its penalty :math:`r`. All functions are pure and jit-/vmap-able.

Conventions shared by every map:

* ``x`` may have any floating dtype. Half types (float16, bfloat16, float8)
  are computed in float32 internally; the result always has the dtype of
  ``x``. Non-floating inputs raise ``TypeError``.
* ``lam`` (and ``a``, ``mu``) may be Python scalars, arrays or tracers. For the
  elementwise maps ``lam`` must broadcast to ``x.shape`` (without changing
  it); for group maps it is a scalar or one value per group. When the value is
  concrete (not traced) it is validated: a negative (or NaN) ``lam`` raises
  ``ValueError``. Traced values are not checked (that would need a host sync).
* For a nonconvex penalty the prox can be set-valued exactly at the threshold
  (two minimisers with equal objective). Every map here picks **zero** at the
  tie, i.e. an entry (or group) is kept only when it is strictly above the
  threshold.
* The maps are differentiable almost everywhere and their gradients with
  respect to ``x`` contain no NaN, also at ``x = 0``, at ``lam = 0`` and for
  all-zero groups (unused branches are evaluated at safe dummy values).

Singular-value helpers for trained rank pruning (TRP): :func:`energy_rank`,
:func:`truncate_svd` and :func:`svd_cut_rank`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sparsejax._util import check_real

__all__ = [
    "l1",
    "l0",
    "lhalf",
    "tl1",
    "group_l2",
    "nuclear",
    "sparse_group",
    "energy_rank",
    "truncate_svd",
    "svd_cut_rank",
]

_KINDS = ("l0", "l1", "tl1", "lhalf")
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------
# Input handling.
# ---------------------------------------------------------------------------


def _as_float(x: ArrayLike, name: str) -> tuple[jax.Array, np.dtype, np.dtype]:
  """Returns (x in its compute dtype, original dtype, compute dtype)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name} must have a real floating dtype (float16, bfloat16, float32, "
        f"float64), got dtype {x.dtype}")
  dtype = x.dtype
  cdtype = jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else dtype
  return x.astype(cdtype), dtype, cdtype


def _elementwise_param(v: ArrayLike, name: str, shape: tuple[int, ...],
                       cdtype, *, strict: bool = False) -> jax.Array:
  """Validates a parameter that must broadcast to ``shape`` elementwise."""
  check_real(name, v, low=0.0, low_open=strict)
  v = jnp.asarray(v)
  try:
    ok = np.broadcast_shapes(v.shape, shape) == tuple(shape)
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f"{name} must be a scalar or broadcastable to x's shape "
                     f"{tuple(shape)} (without enlarging it), got shape {v.shape}")
  return v.astype(cdtype)


def _scalar_param(v: ArrayLike, name: str, cdtype, *,
                  strict: bool = False) -> jax.Array:
  check_real(name, v, low=0.0, low_open=strict)
  v = jnp.asarray(v)
  if v.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
  return v.astype(cdtype)


def _normalize_axis(axis: int, ndim: int) -> int:
  if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
    raise TypeError(f"axis must be an int, got {axis!r}")
  if not -ndim <= axis < ndim:
    raise ValueError(f"axis must be in [{-ndim}, {ndim}) for an array with "
                     f"ndim {ndim}, got {axis}")
  return int(axis) % ndim


def _group_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
  return tuple(n if i == axis else 1 for i, n in enumerate(shape))


def _group_param(v: ArrayLike, name: str, shape: tuple[int, ...], axis: int,
                 cdtype) -> jax.Array:
  """Validates a per-group parameter and reshapes it to the keepdims shape.

  Accepted: a scalar, a vector of length ``shape[axis]`` (one value per group)
  or any array broadcastable to the keepdims group shape (size ``shape[axis]``
  along ``axis`` and 1 elsewhere).
  """
  check_real(name, v, low=0.0)
  v = jnp.asarray(v)
  gshape = _group_shape(shape, axis)
  num_groups = shape[axis]
  if v.ndim == 1 and v.shape[0] in (num_groups, 1):
    v = v.reshape(tuple(v.shape[0] if i == axis else 1
                        for i in range(len(shape))))
  try:
    ok = np.broadcast_shapes(v.shape, gshape) == gshape
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(
        f"{name} must be a scalar, a vector of length {num_groups} (one value "
        f"per group along axis {axis}) or broadcastable to the group shape "
        f"{gshape}, got shape {v.shape}")
  return v.astype(cdtype)


# ---------------------------------------------------------------------------
# Elementwise maps. Each `_name` helper works in the compute dtype and assumes
# validated, broadcastable parameters. The helpers are jitted so that eager
# calls run one fused computation (inside a user's jit they are inlined).
# ---------------------------------------------------------------------------


def _zero_or_nan(x):
  """0 where the map thresholds, but a NaN input stays NaN (a diverged weight
  must not be silently zeroed)."""
  return jnp.where(jnp.isnan(x), x, jnp.zeros_like(x))


@jax.jit
def _soft(x, lam):
  return jnp.where(x > lam, x - lam, jnp.where(x < -lam, x + lam, _zero_or_nan(x)))


@jax.jit
def _hard(x, lam):
  return jnp.where(jnp.abs(x) > jnp.sqrt(2.0 * lam), x, _zero_or_nan(x))


# The closed forms of l1/2 and transformed l1 are trigonometric solutions of
# the cubic 4y^3 - 3y + k = 0 (triple-angle identity, 0 <= k <= 1). XLA's CPU
# backend evaluates arcsin/arccos/pow one element at a time (~10 ns each), so
# the roots are found with four Newton steps from close seeds instead: pure
# multiply-add-divide, vectorised, and converged to rounding in float32 and
# float64 (checked against the trigonometric form on a fine grid of k).
_NEWTON_STEPS = 4


def _safe_sqrt(v):
  """sqrt(max(v, 0)) whose gradient is 0, not NaN, at and below 0."""
  pos = v > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1.0)), 0.0)


def _cubic_largest_root(k):
  """Largest root of 4y^3 - 3y + k = 0 for 0 <= k <= 1/sqrt(2): cos(phi'/3), cos(phi') = -k.

  The root lies in [cos(pi/4), cos(pi/6)], where the derivative is >= 3; the
  seed is the chord between the two ends.
  """
  y = math.cos(math.pi / 6.0) - (math.cos(math.pi / 6.0) - math.cos(math.pi / 4.0)) * k * math.sqrt(2.0)
  for _ in range(_NEWTON_STEPS):
    y = y - ((4.0 * y * y - 3.0) * y + k) / (12.0 * y * y - 3.0)
  return y


def _cubic_middle_root(k):
  """Middle root of 4y^3 - 3y + k = 0 for 0 <= k <= 1: sin(arcsin(k)/3), in [0, 1/2].

  For k < 0.8 Newton runs on y itself from the Taylor seed y ~ k/3 + 0.0494 k^3
  (the slope 12y^2 - 3 stays below -1.9 there), so a tiny root y ~ k/3 keeps
  its relative accuracy. For k >= 0.8 it runs on e = 1/2 - y, which satisfies
  e^2 (6 - 4e) = 1 - k, so that the double root at k = 1 (y = 1/2, e = 0)
  keeps its relative accuracy; seed e ~ sqrt((1 - k)/6).
  """
  small = k < 0.8
  ks = jnp.where(small, k, 0.0)
  y = ks / 3.0 + 0.0494 * ks * ks * ks
  for _ in range(_NEWTON_STEPS):
    y = y - ((4.0 * y * y - 3.0) * y + ks) / (12.0 * y * y - 3.0)
  d = 1.0 - jnp.where(small, 1.0, k)
  e = _safe_sqrt(d / 6.0)
  for _ in range(_NEWTON_STEPS):
    slope = 12.0 * e * (1.0 - e)
    ok = slope > 0
    e = jnp.where(ok, e - (e * e * (6.0 - 4.0 * e) - d) / jnp.where(ok, slope, 1.0), e)
  return jnp.where(small, y, 0.5 - e)


@jax.jit
def _half(x, lam):
  ax = jnp.abs(x)
  # |x| > t = 1.5 lam^(2/3)  <=>  (2|x|/3)^(3/2) > lam: no fractional power,
  # and no squares, so tiny |x| and lam do not underflow to 0 > 0 (float32:
  # lam = 1e-24, x = 1e-15 > t = 1.5e-16 was mapped to 0).
  q = (2.0 / 3.0) * ax
  keep = q * jnp.sqrt(q) > lam
  # k = (lam/4)(|x|/3)^(-3/2) <= 1/sqrt(2) on the branch; 0 elsewhere.
  r = jnp.where(keep, ax, 1.0) / 3.0
  k = jnp.where(keep, (lam / 4.0) / (r * jnp.sqrt(r)), 0.0)
  k = jnp.clip(k, 0.0, math.sqrt(0.5))
  w = _cubic_largest_root(k)  # w = cos(phi'/3); 1 + cos(2 phi'/3) = 2 w^2
  z = jnp.where(keep, (4.0 / 3.0) * x * w * w, _zero_or_nan(x))
  return jnp.where(lam == 0, x, z)  # exact identity (the root is only rounded)


def _tl1_threshold(lam, a):
  small = lam <= a * a / (2.0 * (a + 1.0))
  t_small = lam * (a + 1.0) / a
  t_large = jnp.sqrt(jnp.maximum(2.0 * lam * (a + 1.0), 0.0)) - a / 2.0
  return jnp.where(small, t_small, t_large)


@jax.jit
def _tl1(x, lam, a):
  ax = jnp.abs(x)
  keep = ax > _tl1_threshold(lam, a)
  # sin(phi/2) with phi from the closed form; in [0, 1] on the branch. Off
  # the branch a dummy 0 keeps every step finite.
  b = a + ax
  # 27 lam a (a+1) / (4 b^3) as a product of ratios <= 1: b^3 overflows
  # float32 for a > ~7e12 (k = 0 returned x unshrunk).
  k = _safe_sqrt(jnp.minimum(6.75 * (lam / b) * (a / b) * ((a + 1.0) / b), 1.0))
  k = jnp.where(keep, k, 0.0)
  v = _cubic_middle_root(k)  # v = sin(phi/6)
  # (2/3)(a+|x|)cos(phi/3) - 2a/3 + |x|/3 rewritten with
  # cos(phi/3) = 1 - 2 sin^2(phi/6): no cancellation of the a-terms.
  mag = jnp.where(jnp.isinf(ax), ax, ax - (4.0 / 3.0) * b * v * v)  # inf: no 0 * inf
  return jnp.where(keep, jnp.sign(x) * mag, _zero_or_nan(x))


def l1(x: ArrayLike, lam: ArrayLike) -> jax.Array:
  r"""Soft threshold: the prox of :math:`\lambda\|z\|_1`.

  .. math::

    z = \operatorname{sign}(x)\max(|x| - \lambda, 0).

  Convex, so the minimiser is unique (no tie-breaking); ``|x| <= lam`` gives
  exactly zero.

  Args:
    x: array of any floating dtype.
    lam: non-negative scalar or array broadcastable to ``x.shape``.

  Returns:
    The soft-thresholded array, shape and dtype of ``x``.
  """
  x, dtype, cdtype = _as_float(x, "x")
  lam = _elementwise_param(lam, "lam", x.shape, cdtype)
  return _soft(x, lam).astype(dtype)


def l0(x: ArrayLike, lam: ArrayLike) -> jax.Array:
  r"""Hard threshold: the prox of :math:`\lambda\,\#\{i: z_i \ne 0\}`.

  .. math::

    z = x\,[\,|x| > \sqrt{2\lambda}\,].

  Keeping an entry costs :math:`\lambda`, zeroing it costs :math:`x^2/2`; the
  two tie at :math:`|x| = \sqrt{2\lambda}`, where this map returns **0**
  (``|x| <= sqrt(2 lam)`` -> 0).

  Args:
    x: array of any floating dtype.
    lam: non-negative scalar or array broadcastable to ``x.shape``.

  Returns:
    The hard-thresholded array, shape and dtype of ``x``.
  """
  x, dtype, cdtype = _as_float(x, "x")
  lam = _elementwise_param(lam, "lam", x.shape, cdtype)
  return _hard(x, lam).astype(dtype)


def lhalf(x: ArrayLike, lam: ArrayLike) -> jax.Array:
  r"""Half thresholding: the prox of :math:`\lambda\sum_i |z_i|^{1/2}`.

  The closed form of Xu et al. (2012), rewritten for the
  :math:`\tfrac12\|z - x\|^2` convention: with threshold
  :math:`t = \tfrac32\lambda^{2/3}`,

  .. math::

    z = \begin{cases} 0 & |x| \le t \\
    \tfrac23 x\,\bigl(1 + \cos(\tfrac{2\pi}{3} - \tfrac23\varphi)\bigr),
    \ \varphi = \arccos\bigl(\tfrac{\lambda}{4}(|x|/3)^{-3/2}\bigr)
    & |x| > t. \end{cases}

  At :math:`|x| = t` the objective ties between :math:`z = 0` and
  :math:`z = \tfrac23 x` (the map jumps there); this map returns **0**.
  Evaluated without inverse trigonometric functions (slow on XLA's CPU
  backend): :math:`z = \tfrac43 x\,w^2` with :math:`w = \cos((\pi-\varphi)/3)`
  the largest root of :math:`4w^3 - 3w + \cos\varphi = 0`, found by Newton
  steps that converge to rounding in float32 and float64.

  Args:
    x: array of any floating dtype.
    lam: non-negative scalar or array broadcastable to ``x.shape``.

  Returns:
    The thresholded array, shape and dtype of ``x``.
  """
  x, dtype, cdtype = _as_float(x, "x")
  lam = _elementwise_param(lam, "lam", x.shape, cdtype)
  return _half(x, lam).astype(dtype)


def tl1(x: ArrayLike, lam: ArrayLike, a: ArrayLike = 1.0) -> jax.Array:
  r"""Transformed-ℓ1 thresholding: the prox of :math:`\lambda\sum_i \rho_a(z_i)`.

  :math:`\rho_a(z) = (a+1)|z|/(a+|z|)` (Zhang & Xin). The threshold is

  .. math::

    t = \begin{cases} \lambda(a+1)/a & \lambda \le a^2/(2(a+1)) \\
    \sqrt{2\lambda(a+1)} - a/2 & \text{otherwise,} \end{cases}

  :math:`z = 0` for :math:`|x| \le t`, else

  .. math::

    z = \operatorname{sign}(x)\bigl[\tfrac23(a+|x|)\cos(\varphi/3)
    - \tfrac{2a}{3} + \tfrac{|x|}{3}\bigr],\quad
    \varphi = \arccos\Bigl(1 - \frac{27\lambda a(a+1)}{2(a+|x|)^3}\Bigr).

  It is evaluated in the algebraically equal, cancellation-free form
  :math:`|x| - \tfrac43(a+|x|)v^2` with :math:`v = \sin(\varphi/6)` the root
  in :math:`[0, \tfrac12]` of :math:`4v^3 - 3v + \sin(\varphi/2) = 0`,
  :math:`\sin(\varphi/2) = \sqrt{27\lambda a(a+1)/(4(a+|x|)^3)}`, found by
  Newton steps (no inverse trigonometric functions, which are slow on XLA's
  CPU backend).
  In the first regime the map is continuous; in the second it jumps at
  :math:`|x| = t`, where zero and a nonzero point tie: this map returns **0**.

  Args:
    x: array of any floating dtype.
    lam: non-negative scalar or array broadcastable to ``x.shape``.
    a: shape parameter, ``a > 0`` (scalar or broadcastable to ``x.shape``);
      small ``a`` approaches ℓ0, large ``a`` approaches ℓ1.

  Returns:
    The thresholded array, shape and dtype of ``x``.
  """
  x, dtype, cdtype = _as_float(x, "x")
  lam = _elementwise_param(lam, "lam", x.shape, cdtype)
  a = _elementwise_param(a, "a", x.shape, cdtype, strict=True)
  return _tl1(x, lam, a).astype(dtype)


# ---------------------------------------------------------------------------
# Group and matrix maps.
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="axis")
def _group_scale(x, mu, axis):
  """max(1 - mu / ||x_g||, 0) in the keepdims group shape; NaN-free (+grads)."""
  red = tuple(i for i in range(x.ndim) if i != axis)
  sq = jnp.sum(x * x, axis=red, keepdims=True)
  pos = sq > 0
  norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
  # mu = 0 is the identity, zero groups included (so their gradient is 1, not 0).
  active = (norm > mu) | (mu == 0)
  return jnp.where(active, 1.0 - mu / jnp.where(norm > 0, norm, 1.0), 0.0)


def group_l2(x: ArrayLike, lam: ArrayLike, axis: int = -1) -> jax.Array:
  r"""Group soft threshold: the prox of :math:`\lambda\sum_g \|z_g\|_2`.

  Every index along ``axis`` is one group, holding all entries over the other
  axes (for an HWIO conv kernel, ``axis=-1`` makes each output filter a group
  of ``H*W*I`` weights; for a dense ``(in, out)`` kernel, ``axis=0`` makes each
  input neuron a group). Then

  .. math::

    z_g = \max\bigl(1 - \lambda_g / \|x_g\|_2,\ 0\bigr)\, x_g.

  Convex: the minimiser is unique; ``||x_g|| <= lam`` gives an exactly zero
  group. Zero groups produce no NaN, neither in the value nor in gradients.

  Args:
    x: array with ``ndim >= 1`` of any floating dtype.
    lam: non-negative scalar, a vector with one value per group
      (length ``x.shape[axis]``), or an array broadcastable to the keepdims
      group shape (``x.shape[axis]`` along ``axis``, 1 elsewhere).
    axis: the group axis (int, negative allowed).

  Returns:
    The group-thresholded array, shape and dtype of ``x``.
  """
  x, dtype, cdtype = _as_float(x, "x")
  if x.ndim == 0:
    raise ValueError("x must have ndim >= 1 for group_l2, got a 0-d array")
  axis = _normalize_axis(axis, x.ndim)
  lam = _group_param(lam, "lam", x.shape, axis, cdtype)
  return (x * _group_scale(x, lam, axis)).astype(dtype)


def nuclear(w: ArrayLike, lam: ArrayLike) -> jax.Array:
  r"""Singular-value soft threshold: the prox of :math:`\lambda\|W\|_*`.

  With :math:`W = U\operatorname{diag}(\sigma)V^\top` (thin SVD),

  .. math::

    Z = U \operatorname{diag}\bigl(\max(\sigma - \lambda, 0)\bigr) V^\top.

  Convex, unique minimiser. The reconstruction uses ``HIGHEST`` matmul
  precision. Differentiable wherever no singular value equals ``lam``, also
  at repeated or zero singular values (where differentiating through the SVD
  would divide by :math:`\sigma_i^2 - \sigma_j^2 = 0`): the derivative is
  the closed form of a spectral function (Candès, Sing-Long & Trzasko, 2013).

  Args:
    w: a 2-D array of any floating dtype (use ``jax.vmap`` for a batch).
    lam: non-negative scalar.

  Returns:
    The thresholded matrix, shape and dtype of ``w``.
  """
  w, dtype, cdtype = _as_float(w, "w")
  if w.ndim != 2:
    raise ValueError(f"w must be a 2-D matrix, got ndim {w.ndim} (shape "
                     f"{w.shape}); reshape it first or use jax.vmap")
  lam = _scalar_param(lam, "lam", cdtype)
  return _svt(w, jnp.asarray(lam, cdtype)).astype(dtype)


def _mm(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


@jax.custom_jvp
def _svt(w, lam):
  u, s, vt = jnp.linalg.svd(w, full_matrices=False)
  return _mm(u * jnp.maximum(s - lam, 0.0), vt)


@_svt.defjvp
def _svt_jvp(primals, tangents):
  """JVP of Z = U f(S) V^T, f(s) = max(s - lam, 0), without 1/(s_i - s_j).

  With dP = U^T dW V: dZ = U (K_sym * sym(dP) + K_anti * anti(dP)) V^T
  + (I - UU^T) dW V diag(f/s) V^T + U diag(f/s) U^T dW (I - VV^T)
  - dlam U diag[s > lam] V^T, where K_sym[i,j] = (f_i - f_j)/(s_i - s_j)
  (f'(s_i) on the diagonal) and K_anti[i,j] = (f_i + f_j)/(s_i + s_j). f is
  linear on each side of lam, so K_sym is exactly 1 (0) when both s are above
  (at or below) lam and only straddling pairs, whose s differ, divide.
  0/0 limits (s = 0) take f'(0): 1 when lam = 0 (f is the identity), else 0.
  """
  w, lam = primals
  dw, dlam = tangents
  u, s, vt = jnp.linalg.svd(w, full_matrices=False)
  v = vt.T
  f = jnp.maximum(s - lam, 0.0)
  identity = lam == 0
  above = (s > lam) | identity
  both_above = above[:, None] & above[None, :]
  both_below = ~above[:, None] & ~above[None, :]
  same_side = both_above | both_below
  diff = jnp.where(same_side, 1.0, s[:, None] - s[None, :])
  k_sym = jnp.where(both_above, 1.0, jnp.where(both_below, 0.0, (f[:, None] - f[None, :]) / diff))
  tot = s[:, None] + s[None, :]
  k_anti = jnp.where(tot > 0, (f[:, None] + f[None, :]) / jnp.where(tot > 0, tot, 1.0),
                     identity.astype(w.dtype))
  ratio = jnp.where(s > 0, f / jnp.where(s > 0, s, 1.0), identity.astype(w.dtype))
  dp = _mm(_mm(u.T, dw), v)
  inner = k_sym * (0.5 * (dp + dp.T)) + k_anti * (0.5 * (dp - dp.T))
  dwv = _mm(dw, v)
  left_perp = dwv - _mm(u, _mm(u.T, dwv))  # (I - UU^T) dW V
  utdw = _mm(u.T, dw)
  right_perp = utdw - _mm(_mm(utdw, v), vt)  # U^T dW (I - VV^T)
  dz = (_mm(_mm(u, inner), vt) + _mm(left_perp * ratio, vt) + _mm(u * ratio, right_perp)
        - dlam * _mm(u * (s > lam).astype(w.dtype), vt))
  return _mm(u * f, vt), dz


@functools.partial(jax.jit, static_argnames="axis")
def _sparse_group_l0(x, lam, mu, axis):
  """Exact prox of lam * ||z||_0 + mu * sum_g ||z_g|| (lam, mu per group)."""
  xg = jnp.moveaxis(x, axis, 0)
  shape_g = xg.shape
  xg = xg.reshape(shape_g[0], -1)
  m = xg.shape[1]
  gshape = _group_shape(x.shape, axis)
  lam_g = jnp.broadcast_to(lam, gshape).reshape(-1, 1)
  mu_g = jnp.broadcast_to(mu, gshape).reshape(-1, 1)
  sq = xg * xg
  order = jnp.argsort(-sq, axis=1, stable=True)
  csum = jnp.cumsum(jnp.take_along_axis(sq, order, axis=1), axis=1)  # (G, m)
  pos = csum > 0
  norms = jnp.where(pos, jnp.sqrt(jnp.where(pos, csum, 1.0)), 0.0)
  k = jnp.arange(1, m + 1, dtype=x.dtype)
  gain = 0.5 * jnp.maximum(norms - mu_g, 0.0) ** 2 - lam_g * k
  gain = jnp.concatenate([jnp.zeros_like(gain[:, :1]), gain], axis=1)
  best = jnp.argmax(gain, axis=1)  # first maximiser: the sparsest on ties.
  n_best = jnp.take_along_axis(
      norms, jnp.maximum(best - 1, 0)[:, None], axis=1)
  active = (best[:, None] > 0) & (n_best > mu_g)
  scale = jnp.where(active, 1.0 - mu_g / jnp.where(active, n_best, 1.0), 0.0)
  rank = jnp.argsort(order, axis=1)  # position of each entry in the sort.
  keep = rank < best[:, None]
  z = jnp.where(keep, xg * scale, 0.0)
  # A NaN sorts last and would be dropped: keep it, and zero the rest of its
  # group, as the other kinds do (a diverged weight is never silently zeroed).
  nan = jnp.isnan(xg)
  z = jnp.where(jnp.any(nan, axis=1, keepdims=True), jnp.where(nan, xg, 0.0), z)
  return jnp.moveaxis(z.reshape(shape_g), 0, axis)


def sparse_group(x: ArrayLike, lam: ArrayLike, mu: ArrayLike, *,
                 kind: str = "l1", axis: int = -1,
                 a: ArrayLike = 1.0) -> jax.Array:
  r"""Sparse-group map for :math:`\lambda\sum_i r(z_i) + \mu\sum_g\|z_g\|_2`.

  Groups are as in :func:`group_l2` (every index along ``axis`` is a group).
  What is computed, and whether it is the exact prox, depends on ``kind``:

  * ``"l1"`` (:math:`r = |\cdot|`): ``group_l2(l1(x, lam), mu)``. This is the
    **exact** prox (the sparse-group-lasso composition result: the prox of
    :math:`\lambda\|\cdot\|_1 + \mu\|\cdot\|_2` is the group shrink of the
    soft threshold).
  * ``"l0"`` (:math:`r = [z \ne 0]`): the **exact** prox, which is *not* the
    composition ``group_l2(l0(x, lam), mu)`` in general (the composition
    ignores that the group shrink lowers the value of keeping an entry). For a
    support :math:`S` the best :math:`z_S` is the group shrink of
    :math:`x_S`, with objective :math:`\tfrac12\|x\|^2 -
    \tfrac12(\|x_S\| - \mu)_+^2 + \lambda|S|`; so the optimal support holds
    the :math:`k` largest :math:`|x_i|` of the group, with :math:`k` maximising
    :math:`\tfrac12(\|x_{\mathrm{top}\,k}\| - \mu)_+^2 - \lambda k`. Computed
    by a per-group sort. Ties: the smallest maximising :math:`k` (the sparsest
    minimiser; an all-tie group gives zero); among equal magnitudes at the
    cut, the earlier entry in flattened order is kept. ``lam`` must be
    constant within each group here (a scalar or one value per group, like
    ``mu``).
  * ``"tl1"``, ``"lhalf"``: the standard two-step map
    ``group_l2(tl1(x, lam, a), mu)`` / ``group_l2(lhalf(x, lam), mu)``. This is
    **not** the exact prox, and in general not even a stationary point of the
    objective (the composition is exact only when :math:`r'` is constant on
    the support, as for ℓ1); it is the heuristic used for these penalties.
    Ties as in :func:`tl1` / :func:`lhalf` and :func:`group_l2` (zero).

  Args:
    x: array with ``ndim >= 1`` of any floating dtype.
    lam: non-negative weight of the elementwise penalty; a scalar or an array
      broadcastable to ``x.shape`` (for ``kind="l0"``: scalar or per group).
    mu: non-negative weight of the group penalty; scalar or per group, as
      ``lam`` in :func:`group_l2`.
    kind: elementwise penalty, one of ``"l0"``, ``"l1"``, ``"tl1"``,
      ``"lhalf"``.
    axis: the group axis (int, negative allowed).
    a: transformed-ℓ1 parameter (``a > 0``), used only for ``kind="tl1"``.

  Returns:
    The result, shape and dtype of ``x``.
  """
  if kind not in _KINDS:
    raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
  x, dtype, cdtype = _as_float(x, "x")
  if x.ndim == 0:
    raise ValueError("x must have ndim >= 1 for sparse_group, got a 0-d array")
  axis = _normalize_axis(axis, x.ndim)
  mu = _group_param(mu, "mu", x.shape, axis, cdtype)
  if kind == "l0":
    lam = _group_param(lam, "lam", x.shape, axis, cdtype)
    z = _sparse_group_l0(x, lam, mu, axis)
    return z.astype(dtype)
  lam = _elementwise_param(lam, "lam", x.shape, cdtype)
  if kind == "l1":
    u = _soft(x, lam)
  elif kind == "lhalf":
    u = _half(x, lam)
  else:
    a = _elementwise_param(a, "a", x.shape, cdtype, strict=True)
    u = _tl1(x, lam, a)
  return (u * _group_scale(u, mu, axis)).astype(dtype)


# ---------------------------------------------------------------------------
# Singular-value helpers (trained rank pruning).
# ---------------------------------------------------------------------------


def _check_energy(energy) -> None:
  check_real("energy", energy, low=0.0, high=1.0, low_open=True, scalar=True)


def energy_rank(s: ArrayLike, energy: ArrayLike) -> jax.Array:
  r"""Smallest rank keeping a fraction ``energy`` of the spectral energy.

  .. math::

    r = \min\Bigl\{ r : \sum_{i \le r}\sigma_i^2 \ge e \sum_i \sigma_i^2
    \Bigr\}.

  ``s`` must be sorted in descending order (as ``jnp.linalg.svd`` returns it);
  this is not checked. An all-zero spectrum gives ``r = 0``. Works on traced
  ``s`` and ``energy``; leading axes of ``s`` are batch axes.

  Args:
    s: singular values, shape ``(..., k)`` with ``k >= 1``, descending along
      the last axis.
    energy: scalar in ``(0, 1]`` (checked when concrete).

  Returns:
    int32 rank(s) of shape ``s.shape[:-1]``, each in ``[0, k]``.
  """
  s, _, cdtype = _as_float(s, "s")
  if s.ndim == 0 or s.shape[-1] == 0:
    raise ValueError(f"s must have ndim >= 1 and a non-empty last axis, got "
                     f"shape {s.shape}")
  _check_energy(energy)
  energy = jnp.asarray(energy).astype(cdtype)
  if energy.ndim != 0:
    raise ValueError(f"energy must be a scalar, got shape {energy.shape}")
  csum = jnp.cumsum(s * s, axis=-1)
  total = csum[..., -1:]
  k = s.shape[-1]
  r = jnp.sum(csum < energy * total, axis=-1) + 1
  r = jnp.where(total[..., 0] > 0, jnp.minimum(r, k), 0)
  return r.astype(jnp.int32)


def truncate_svd(w: ArrayLike, energy: ArrayLike) -> tuple[jax.Array, jax.Array]:
  r"""Best rank-``r`` approximation keeping a fraction ``energy`` of the energy.

  ``r = energy_rank(svd(w).S, energy)``; the result is
  :math:`U \operatorname{diag}(\sigma \odot [i < r]) V^\top` (Eckart–Young:
  the closest rank-``r`` matrix in Frobenius norm). Shapes are static: the
  discarded singular values are masked, not sliced off, so this jit-compiles
  with a traced ``energy``.

  Args:
    w: 2-D array of any floating dtype (use ``jax.vmap`` for a batch).
    energy: scalar in ``(0, 1]`` (checked when concrete).

  Returns:
    ``(w_r, r)``: the approximation (shape and dtype of ``w``) and its rank
    (int32 scalar).
  """
  w, dtype, _ = _as_float(w, "w")
  if w.ndim != 2:
    raise ValueError(f"w must be a 2-D matrix, got ndim {w.ndim} (shape "
                     f"{w.shape})")
  u, s, vt = jnp.linalg.svd(w, full_matrices=False)
  r = energy_rank(s, energy)
  s = jnp.where(jnp.arange(s.shape[-1]) < r, s, 0.0)
  return jnp.matmul(u * s, vt, precision=_HIGHEST).astype(dtype), r


def svd_cut_rank(s: ArrayLike, cut: ArrayLike) -> jax.Array:
  """Number of singular values ``>= cut`` (TRP's final decomposition rank).

  Args:
    s: singular values, shape ``(..., k)``; the order does not matter.
    cut: non-negative scalar (checked when concrete), e.g. ``0.05``.

  Returns:
    int32 count(s) of shape ``s.shape[:-1]``.
  """
  s, _, cdtype = _as_float(s, "s")
  if s.ndim == 0:
    raise ValueError("s must have ndim >= 1, got a 0-d array")
  cut = _scalar_param(cut, "cut", cdtype)
  return jnp.sum(s >= cut, axis=-1).astype(jnp.int32)
