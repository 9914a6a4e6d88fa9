r"""A bilevel problem with quadratic losses whose answers are known in closed form.

Weights :math:`w \in R^n`, architecture :math:`\alpha \in R^m`, a symmetric
positive definite :math:`A` (n x n), :math:`C` (n x m), :math:`d \in R^n`,
:math:`e \in R^m`, :math:`\mu \ge 0`:

.. math::
   L_{train}(w, \alpha) = \tfrac12 (w - C\alpha)^T A (w - C\alpha), \qquad
   L_{val}(w, \alpha) = \tfrac12 \|w - d\|^2 + \tfrac{\mu}{2} \|\alpha - e\|^2.

The training loss wants ``w`` to follow the architecture (:math:`w^*(\alpha) =
C\alpha`); the validation loss wants ``w`` near ``d`` and ``alpha`` near ``e``.

**Bilevel optimum.** :math:`\min_\alpha \tfrac12\|C\alpha - d\|^2 + \tfrac{\mu}{2}
\|\alpha - e\|^2` gives

.. math:: \alpha^* = (C^TC + \mu I)^{-1} (C^T d + \mu e)

(for :math:`\mu = 0` this needs :math:`C` of full column rank).

**First-order DARTS** uses :math:`\nabla_\alpha L_{val}(w, \alpha) = \mu(\alpha - e)`,
blind to how ``w`` depends on ``alpha``: its fixed point is :math:`\alpha = e`,
wrong unless :math:`e = \alpha^*`; with :math:`\mu = 0` it gets no
architecture gradient at all and ``alpha`` stays where it started (up to the
optimizer's weight decay).

**Second-order DARTS.** :math:`\nabla^2_{\alpha,w} L_{train}\, v = -C^T A v`, and at a
fixed point :math:`w = C\alpha` the virtual step leaves ``w`` unchanged, so the
hypergradient :math:`\mu(\alpha - e) + \xi C^T A (C\alpha - d)` vanishes at

.. math:: \alpha_2(\xi) = (\xi C^T A C + \mu I)^{-1} (\xi C^T A d + \mu e),

which is :math:`\alpha^*` when :math:`\xi A = I` (one virtual step solves the
inner problem) or when :math:`\mu = 0`, and differs otherwise. The
finite-difference Hessian term is exact here (:math:`\nabla_\alpha L_{train}` is
linear in ``w``).

**RARTS.** A fixed point of the sweep (any optimizer whose fixed points are
zero gradients) is a stationary point of :math:`L_\beta`:
:math:`\lambda A(w - C\alpha) + \beta(w - y) = 0`, :math:`y - d + \beta(y - w) = 0`,
:math:`\mu(\alpha - e) - \lambda C^T A (w - C\alpha) = 0`. With :math:`r = d - y`
these give :math:`d - C\alpha = M r`, :math:`M = (1 + 1/\beta) I + (\lambda A)^{-1}`,
and :math:`\mu(\alpha - e) = C^T r`, so

.. math:: \alpha_R(\lambda, \beta) = (C^T M^{-1} C + \mu I)^{-1} (C^T M^{-1} d + \mu e).

* **Realizable case** (:func:`realizable_problem`: :math:`\mu = 0`, square
  invertible :math:`C`): the validation loss can be driven to zero through the
  architecture, :math:`\alpha^* = C^{-1} d`, and :math:`L_\beta \ge 0` vanishes
  only at :math:`y = w = d, \alpha = \alpha^*`. So :math:`\alpha_R = \alpha^*`
  for every :math:`\lambda, \beta > 0`: RARTS's fixed point is the bilevel
  optimum, first-order DARTS does not move, second-order DARTS also reaches it.
* **General case** (:math:`\mu > 0`): :math:`\alpha_R \to \alpha^*` only as
  :math:`\lambda \to \infty` and :math:`\beta \to \infty` (:math:`M \to I`); as
  :math:`\lambda \to 0` or :math:`\beta \to 0` it tends to ``e``, the
  first-order DARTS point. The relaxation trades exactness for a first-order
  method.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["QuadraticBilevel", "random_problem", "realizable_problem"]


class QuadraticBilevel(NamedTuple):
  """The quadratic bilevel problem of the module docstring.

  Attributes:
    A: ``(n, n)`` symmetric positive definite.
    C: ``(n, m)``.
    d: ``(n,)``.
    e: ``(m,)``.
    mu: ``> 0``.
  """
  A: np.ndarray
  C: np.ndarray
  d: np.ndarray
  e: np.ndarray
  mu: float

  # --- losses, in the (weights, alphas, batch) -> (loss, aux) form of sparsejax.search ----

  def train_loss(self, w: jax.Array, alpha: jax.Array, batch: Any = None) -> tuple[jax.Array, dict]:
    """:math:`L_{train}`; ``batch`` is ignored."""
    del batch
    r = w - jnp.asarray(self.C, w.dtype) @ alpha
    return 0.5 * r @ (jnp.asarray(self.A, w.dtype) @ r), {}

  def val_loss(self, w: jax.Array, alpha: jax.Array, batch: Any = None) -> tuple[jax.Array, dict]:
    """:math:`L_{val}`; ``batch`` is ignored."""
    del batch
    dw = w - jnp.asarray(self.d, w.dtype)
    da = alpha - jnp.asarray(self.e, alpha.dtype)
    return 0.5 * dw @ dw + 0.5 * self.mu * da @ da, {}

  # --- closed forms -----------------------------------------------------------

  def inner_solution(self, alpha: np.ndarray) -> np.ndarray:
    """:math:`w^*(\\alpha) = C\\alpha`."""
    return np.asarray(self.C, np.float64) @ np.asarray(alpha, np.float64)

  def optimum(self) -> np.ndarray:
    """The bilevel optimum :math:`\\alpha^*`."""
    return self._solve(np.eye(self.d.shape[0]))

  def darts_first_order_fixed_point(self) -> np.ndarray:
    """First-order DARTS's fixed point ``e`` (for ``mu > 0``; with ``mu = 0`` alpha does not move)."""
    if not self.mu > 0:
      raise ValueError(f"first-order DARTS has no fixed point in alpha for mu={self.mu!r}: "
                       "its architecture gradient is identically zero (mu must be > 0)")
    return np.asarray(self.e, np.float64)

  def darts_second_order_fixed_point(self, xi: float) -> np.ndarray:
    """Second-order DARTS's fixed point :math:`\\alpha_2(\\xi)`."""
    return self._solve(xi * np.asarray(self.A, np.float64))

  def rarts_fixed_point(self, lam: float, beta: float) -> np.ndarray:
    """RARTS's fixed point :math:`\\alpha_R(\\lambda, \\beta)` (``lam, beta > 0``)."""
    if not lam > 0 or not beta > 0:
      raise ValueError(f"lam and beta must be > 0 for the closed form, got lam={lam!r}, "
                       f"beta={beta!r}")
    n = self.d.shape[0]
    m = (1 + 1 / beta) * np.eye(n) + np.linalg.inv(lam * np.asarray(self.A, np.float64))
    return self._solve(np.linalg.inv(m))

  def _solve(self, k: np.ndarray) -> np.ndarray:
    """:math:`(C^T K C + \\mu I)^{-1} (C^T K d + \\mu e)`."""
    c = np.asarray(self.C, np.float64)
    lhs = c.T @ k @ c + self.mu * np.eye(c.shape[1])
    rhs = c.T @ k @ np.asarray(self.d, np.float64) + self.mu * np.asarray(self.e, np.float64)
    return np.linalg.solve(lhs, rhs)


def random_problem(seed: int = 0, n: int = 3, m: int = 2, mu: float = 0.5,
                   a_scale: float = 1.0) -> QuadraticBilevel:
  """A random well-conditioned instance (eigenvalues of ``A`` in ``a_scale * [1, 2]``)."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = a_scale * (q * np.linspace(1.0, 2.0, n)) @ q.T
  return QuadraticBilevel(A=(a + a.T) / 2, C=rng.normal(size=(n, m)), d=rng.normal(size=n),
                          e=rng.normal(size=m), mu=float(mu))


def realizable_problem(seed: int = 0, n: int = 3, a_scale: float = 1.0) -> QuadraticBilevel:
  """A random instance of the realizable case: ``mu = 0``, square invertible ``C`` (``n x n``).

  Its optimum :math:`\alpha^* = C^{-1} d` is also RARTS's fixed point for every
  :math:`\lambda, \beta > 0` (module docstring).
  """
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = a_scale * (q * np.linspace(1.0, 2.0, n)) @ q.T
  q2, _ = np.linalg.qr(rng.normal(size=(n, n)))
  c = (q2 * np.linspace(0.7, 1.3, n)) @ q2.T  # singular values in [0.7, 1.3]
  return QuadraticBilevel(A=(a + a.T) / 2, C=c, d=rng.normal(size=n), e=rng.normal(size=n),
                          mu=0.0)
