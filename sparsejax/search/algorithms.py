r"""Search algorithms as pure, jittable step functions: DARTS (first/second order) and RARTS.

Every algorithm works on any pytrees of weights and architecture logits and on
loss functions ``loss_fn(weights, alphas, batch) -> (loss, aux)`` (``aux`` a
pytree of metrics, e.g. correct counts). Weights and logits have their own
Optax optimizers. A factory returns ``step(state, train_batch, val_batch) ->
(state, metrics)``; wrap it in ``jax.jit``.

Every loss evaluation inside a step goes through one *gradient pass*
``grads_fn(weights, alphas, batch) -> ((loss, aux), (grad_weights,
grad_alphas))`` (default: :func:`loss_and_grads` of ``loss_fn``); under
``jax.jit`` XLA drops the gradients a pass does not use. A caller may instead
pass an already jitted ``grads_fn`` and run the step without ``jit``: then the
network is compiled once, shared by every pass of every method (what
``run_search`` does with ``config.compile = "pass"`` on the CPU, where
compiling a whole DARTS step takes minutes). Passes per step: DARTS first
order 2, second order 5 (finite differences), RARTS 4 (Gauss-Seidel, as
written) or 2 (``alpha_update="jacobi"``).

**DARTS** (Liu et al., 2019) solves the bilevel problem
:math:`\min_\alpha L_{val}(w^*(\alpha), \alpha)`,
:math:`w^*(\alpha) = \arg\min_w L_{train}(w, \alpha)`, alternating per step:

1. an architecture step on a validation batch with the gradient

   * first order: :math:`\nabla_\alpha L_{val}(w, \alpha)` at the current ``w``;
   * second order: with :math:`w' = w - \xi \nabla_w L_{train}(w, \alpha)`,

     .. math::
        g = \nabla_\alpha L_{val}(w', \alpha)
            - \xi \nabla^2_{\alpha, w} L_{train}(w, \alpha)\, \nabla_{w'} L_{val}(w', \alpha)

     where the mixed term is either DARTS's central finite difference
     :math:`(\nabla_\alpha L_{train}(w^+, \alpha) - \nabla_\alpha L_{train}(w^-, \alpha)) / (2\epsilon)`,
     :math:`w^\pm = w \pm \epsilon v`, :math:`v = \nabla_{w'} L_{val}(w', \alpha)`,
     :math:`\epsilon = \text{fd\_epsilon} / \|v\|` (``hessian="finite_difference"``,
     the default, as DARTS), or exact: :math:`g = \nabla_\alpha [L_{val}(w - \xi
     \nabla_w L_{train}(w, \alpha), \alpha)]` by autodiff through the unrolled
     step (``hessian="exact"``), which is the same formula without the
     finite-difference error;
2. a weight step on a training batch at the new ``alpha``.

Our choices: the virtual step uses the plain gradient (DARTS's code also folds
in momentum and weight decay), and ``xi`` is a float or a schedule of the step
count (DARTS uses the weights' learning rate).

**RARTS** (Xue, Qi, Xin, 2022) replaces the bilevel problem by the
single-level relaxed objective over two weight copies, ``w`` (fit on training
batches) and ``y`` (fit on validation batches):

.. math::
   L_\beta(y, w, \alpha) = L_{val}(y, \alpha) + \lambda L_{train}(w, \alpha)
                           + \tfrac{\beta}{2} \|y - w\|^2

and makes one Gauss-Seidel sweep per step, each a step of its own optimizer:

1. ``w`` with :math:`\lambda \nabla_w L_{train}(w, \alpha) + \beta (w - y)` (training batch);
2. ``y`` with :math:`\nabla_y L_{val}(y, \alpha) + \beta (y - w)` (validation batch, new ``w``);
3. ``alpha`` with :math:`\nabla_\alpha [L_{val}(y, \alpha) + \lambda L_{train}(w, \alpha)]`
   (the same two batches, new ``w`` and ``y``).

The sweep follows ``ALGORITHMS.md`` section 4, whose per-step details are
marked unverified against the paper; ``y`` starts as a copy of ``w``; the
defaults ``lam = beta = 1`` are ours. Each step goes through the optimizer of
its variable, so with SGD of learning rate :math:`\eta` it is exactly the
written update with step size :math:`\eta` (momentum, weight decay and
clipping, when configured, act on the whole gradient, coupling included).
Step 3 costs two more gradient passes than steps 1-2. ``alpha_update="jacobi"``
(ours, not in the source) instead takes the architecture gradients from the
passes of steps 1 and 2, i.e. at the old ``w`` and ``y``: 2 passes per step
instead of 4, the same fixed points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparsejax import _util

__all__ = [
    "SearchState",
    "LossFn",
    "init_darts",
    "init_rarts",
    "darts_hypergradient",
    "darts_step",
    "rarts_step",
    "loss_and_grads",
    "GradsFn",
    "HESSIAN_MODES",
    "ALPHA_UPDATES",
]

LossFn = Callable[[Any, Any, Any], tuple[jax.Array, Any]]
GradsFn = Callable[[Any, Any, Any], tuple[tuple[jax.Array, Any], tuple[Any, Any]]]
StepFn = Callable[["SearchState", Any, Any], tuple["SearchState", dict]]
HESSIAN_MODES = ("finite_difference", "exact")
ALPHA_UPDATES = ("gauss_seidel", "jacobi")


def loss_and_grads(loss_fn: LossFn) -> GradsFn:
  """The gradient pass of ``loss_fn``: ``(w, alphas, batch) -> ((loss, aux), (g_w, g_alphas))``."""
  return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)


def _grads(loss_fn: LossFn | None, grads_fn: GradsFn | None, name: str) -> GradsFn:
  if grads_fn is not None:
    if not callable(grads_fn):
      raise ValueError(f"{name} must be callable (w, alphas, batch) -> ((loss, aux), "
                       f"(g_w, g_alphas)), got {grads_fn!r}")
    return grads_fn
  return loss_and_grads(loss_fn)


class SearchState(NamedTuple):
  """Weights, architecture logits and optimizer states of a search.

  Attributes:
    step: int32 scalar, steps taken.
    weights: ``w``, the weights fit on training batches.
    alphas: architecture logits.
    weights_opt_state: optimizer state of ``weights``.
    alphas_opt_state: optimizer state of ``alphas``.
    val_weights: RARTS's ``y`` (fit on validation batches); ``None`` for DARTS.
    val_weights_opt_state: optimizer state of ``val_weights``; ``None`` for DARTS.
  """
  step: jax.Array
  weights: Any
  alphas: Any
  weights_opt_state: Any
  alphas_opt_state: Any
  val_weights: Any = None
  val_weights_opt_state: Any = None


def _train_val_grads(loss_fn, grads_fn, val_loss_fn, val_grads_fn):
  """Gradient passes of L_train and L_val; one shared pass when no L_val is given."""
  grads = _grads(loss_fn, grads_fn, "grads_fn")
  if val_loss_fn is None and val_grads_fn is None:  # one loss for both halves
    return grads, loss_fn, grads
  val_loss_fn = loss_fn if val_loss_fn is None else val_loss_fn
  return grads, val_loss_fn, _grads(val_loss_fn, val_grads_fn, "val_grads_fn")


def init_darts(weights: Any, alphas: Any, weights_tx: optax.GradientTransformation,
               alphas_tx: optax.GradientTransformation) -> SearchState:
  """The initial DARTS state."""
  return SearchState(step=jnp.zeros([], jnp.int32), weights=weights, alphas=alphas,
                     weights_opt_state=weights_tx.init(weights),
                     alphas_opt_state=alphas_tx.init(alphas))


def init_rarts(weights: Any, alphas: Any, weights_tx: optax.GradientTransformation,
               alphas_tx: optax.GradientTransformation,
               val_weights_tx: optax.GradientTransformation | None = None) -> SearchState:
  """The initial RARTS state: ``y`` starts as a copy of ``w``.

  ``val_weights_tx`` defaults to ``weights_tx`` (each copy keeps its own state).
  """
  val_weights_tx = weights_tx if val_weights_tx is None else val_weights_tx
  y = jax.tree.map(jnp.array, weights)  # a copy, so donation of w does not touch y
  return SearchState(step=jnp.zeros([], jnp.int32), weights=weights, alphas=alphas,
                     weights_opt_state=weights_tx.init(weights),
                     alphas_opt_state=alphas_tx.init(alphas), val_weights=y,
                     val_weights_opt_state=val_weights_tx.init(y))


# ----------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------


def _check_xi(xi: Any) -> None:
  if xi is None:
    raise ValueError("xi must be a number >= 0 or a schedule step -> number (DARTS uses the "
                     "weights' learning rate), got xi=None")
  if not callable(xi):
    _util.check_real("xi", xi, low=0.0, scalar=True, finite=True)


def _value(x: optax.ScalarOrSchedule, step: jax.Array) -> jax.Array:
  return x(step) if callable(x) else jnp.asarray(x)


# ----------------------------------------------------------------------------
# Tree helpers
# ----------------------------------------------------------------------------


def _axpy(a: jax.Array, x: Any, y: Any) -> Any:
  """``a * x + y`` leafwise."""
  return jax.tree.map(lambda xi, yi: (a * xi + yi).astype(yi.dtype), x, y)


def _norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _apply(tx: optax.GradientTransformation, grads: Any, opt_state: Any,
           params: Any) -> tuple[Any, Any]:
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


# ----------------------------------------------------------------------------
# DARTS
# ----------------------------------------------------------------------------


def darts_hypergradient(loss_fn: LossFn, weights: Any, alphas: Any, train_batch: Any,
                        val_batch: Any, xi: jax.Array | float, *,
                        hessian: str = "finite_difference", fd_epsilon: float = 0.01,
                        val_loss_fn: LossFn | None = None, grads_fn: GradsFn | None = None,
                        val_grads_fn: GradsFn | None = None) -> tuple[Any, tuple[jax.Array, Any]]:
  r"""DARTS's second-order architecture gradient at ``(weights, alphas)``.

  .. math::
     g = \nabla_\alpha L_{val}(w', \alpha)
         - \xi \nabla^2_{\alpha, w} L_{train}(w, \alpha)\, \nabla_{w'} L_{val}(w', \alpha),
     \quad w' = w - \xi \nabla_w L_{train}(w, \alpha)

  Args:
    loss_fn: ``L_train`` as ``(weights, alphas, batch) -> (loss, aux)``.
    weights: ``w``.
    alphas: ``alpha``.
    train_batch: batch of ``L_train``.
    val_batch: batch of ``L_val``.
    xi: virtual step size :math:`\xi`.
    hessian: ``"finite_difference"`` (DARTS's central difference of
      :math:`\nabla_\alpha L_{train}` along :math:`v = \nabla_{w'} L_{val}(w', \alpha)`,
      at :math:`w \pm \epsilon v`, :math:`\epsilon` = ``fd_epsilon`` / :math:`\|v\|`;
      4 gradient passes) or ``"exact"`` (autodiff through the virtual step; needs
      ``jax.jit`` around the caller to be efficient and ignores ``grads_fn``).
    fd_epsilon: finite-difference scale (DARTS: 0.01).
    val_loss_fn: ``L_val``; defaults to ``loss_fn``.
    grads_fn: the gradient pass of ``L_train`` (module docstring).
    val_grads_fn: the gradient pass of ``L_val``.

  Returns:
    ``(g, (val_loss, val_aux))`` with the validation loss at ``w'``.
  """
  if hessian not in HESSIAN_MODES:
    raise ValueError(f"hessian must be one of {HESSIAN_MODES}, got hessian={hessian!r}")
  # fd_epsilon = 0 divides 0 by 0 (a NaN hypergradient); traced xi (in a jitted step) passes.
  _util.check_real("fd_epsilon", fd_epsilon, low=0.0, low_open=True, scalar=True, finite=True)
  _util.check_real("xi", xi, low=0.0, scalar=True, finite=True)
  val_loss_fn = loss_fn if val_loss_fn is None else val_loss_fn

  if hessian == "exact":
    train_loss = lambda w, a: loss_fn(w, a, train_batch)[0]  # noqa: E731

    def unrolled(a):
      w_prime = _axpy(-xi, jax.grad(train_loss)(weights, a), weights)
      return val_loss_fn(w_prime, a, val_batch)
    (val_loss, val_aux), g = jax.value_and_grad(unrolled, has_aux=True)(alphas)
    return g, (val_loss, val_aux)

  grads = _grads(loss_fn, grads_fn, "grads_fn")
  val_grads = grads if val_grads_fn is None and val_loss_fn is loss_fn else _grads(
      val_loss_fn, val_grads_fn, "val_grads_fn")
  _, (g_w, _) = grads(weights, alphas, train_batch)
  w_prime = _axpy(-xi, g_w, weights)
  (val_loss, val_aux), (v, g_direct) = val_grads(w_prime, alphas, val_batch)
  eps = fd_epsilon / jnp.maximum(_norm(v), 1e-12)
  _, (_, g_plus) = grads(_axpy(eps, v, weights), alphas, train_batch)
  _, (_, g_minus) = grads(_axpy(-eps, v, weights), alphas, train_batch)
  g = jax.tree.map(lambda d, p, m: d - xi * (p - m) / (2 * eps), g_direct, g_plus, g_minus)
  return g, (val_loss, val_aux)


def darts_step(loss_fn: LossFn, weights_tx: optax.GradientTransformation,
               alphas_tx: optax.GradientTransformation, *, order: int = 1,
               xi: optax.ScalarOrSchedule | None = None, hessian: str = "finite_difference",
               fd_epsilon: float = 0.01, val_loss_fn: LossFn | None = None,
               grads_fn: GradsFn | None = None,
               val_grads_fn: GradsFn | None = None) -> StepFn:
  """DARTS's step: architecture step (validation batch), then weight step (training batch).

  Args:
    loss_fn: ``L_train`` as ``(weights, alphas, batch) -> (loss, aux)``.
    weights_tx: optimizer of the weights.
    alphas_tx: optimizer of the architecture logits.
    order: 1 (architecture gradient at the current weights) or 2 (unrolled;
      see :func:`darts_hypergradient`).
    xi: virtual step size for ``order=2``: a number or a schedule of the step count.
    hessian: for ``order=2``, ``"finite_difference"`` (default, as DARTS) or ``"exact"``.
    fd_epsilon: finite-difference scale for ``order=2``.
    val_loss_fn: ``L_val``; defaults to ``loss_fn``.
    grads_fn: the gradient pass of ``L_train`` (module docstring); defaults
      to :func:`loss_and_grads` of ``loss_fn``.
    val_grads_fn: the gradient pass of ``L_val``.

  Returns:
    ``step(state, train_batch, val_batch) -> (state, metrics)`` with metrics
    ``train_loss`` (at the old weights, new alphas), ``val_loss`` (at the
    weights the architecture gradient used), ``train_aux``, ``val_aux``.
  """
  if isinstance(order, bool) or order not in (1, 2):
    raise ValueError(f"order must be 1 or 2, got order={order!r}")
  if hessian not in HESSIAN_MODES:
    raise ValueError(f"hessian must be one of {HESSIAN_MODES}, got hessian={hessian!r}")
  _util.check_real("fd_epsilon", fd_epsilon, low=0.0, low_open=True, scalar=True, finite=True)
  if order == 2:
    _check_xi(xi)
  grads, val_loss_fn, val_grads = _train_val_grads(loss_fn, grads_fn, val_loss_fn, val_grads_fn)

  def step(state: SearchState, train_batch: Any, val_batch: Any) -> tuple[SearchState, dict]:
    if order == 1:
      (val_loss, val_aux), (_, g_alpha) = val_grads(state.weights, state.alphas, val_batch)
    else:
      g_alpha, (val_loss, val_aux) = darts_hypergradient(
          loss_fn, state.weights, state.alphas, train_batch, val_batch,
          _value(xi, state.step), hessian=hessian, fd_epsilon=fd_epsilon,
          val_loss_fn=val_loss_fn, grads_fn=grads, val_grads_fn=val_grads)
    alphas, alphas_opt = _apply(alphas_tx, g_alpha, state.alphas_opt_state, state.alphas)
    (train_loss, train_aux), (g_w, _) = grads(state.weights, alphas, train_batch)
    weights, weights_opt = _apply(weights_tx, g_w, state.weights_opt_state, state.weights)
    new = state._replace(step=state.step + 1, weights=weights, alphas=alphas,
                         weights_opt_state=weights_opt, alphas_opt_state=alphas_opt)
    return new, {"train_loss": train_loss, "val_loss": val_loss, "train_aux": train_aux,
                 "val_aux": val_aux}

  return step


# ----------------------------------------------------------------------------
# RARTS
# ----------------------------------------------------------------------------


def rarts_step(loss_fn: LossFn, weights_tx: optax.GradientTransformation,
               alphas_tx: optax.GradientTransformation, *, lam: float = 1.0,
               beta: float = 1.0, val_weights_tx: optax.GradientTransformation | None = None,
               alpha_update: str = "gauss_seidel", val_loss_fn: LossFn | None = None,
               grads_fn: GradsFn | None = None,
               val_grads_fn: GradsFn | None = None) -> StepFn:
  r"""RARTS's sweep over ``w``, ``y`` and ``alpha`` (module docstring).

  With :math:`L_\beta(y, w, \alpha) = L_{val}(y, \alpha) + \lambda L_{train}(w, \alpha)
  + \tfrac{\beta}{2}\|y - w\|^2` and the optimizers' steps written as plain
  gradient steps:

  .. math::
     w &\leftarrow w - \eta_w \left(\lambda \nabla_w L_{train}(w, \alpha) + \beta (w - y)\right) \\
     y &\leftarrow y - \eta_y \left(\nabla_y L_{val}(y, \alpha) + \beta (y - w)\right) \\
     \alpha &\leftarrow \alpha - \eta_\alpha \nabla_\alpha \left(L_{val}(y, \alpha)
        + \lambda L_{train}(w, \alpha)\right)

  each line using the values the lines above produced (Gauss-Seidel).

  Args:
    loss_fn: ``L_train`` as ``(weights, alphas, batch) -> (loss, aux)``.
    weights_tx: optimizer of ``w`` (its learning rate is :math:`\eta_w`).
    alphas_tx: optimizer of ``alpha`` (:math:`\eta_\alpha`).
    lam: :math:`\lambda \ge 0`, the weight of the training loss.
    beta: :math:`\beta \ge 0`, the coupling strength of ``y`` and ``w``.
    val_weights_tx: optimizer of ``y`` (:math:`\eta_y`); defaults to ``weights_tx``.
    alpha_update: ``"gauss_seidel"`` (the third line at the new ``w`` and
      ``y``, as written; 4 gradient passes per step) or ``"jacobi"`` (ours:
      at the old ``w`` and ``y``, reusing the passes of the first two lines;
      2 passes per step).
    val_loss_fn: ``L_val``; defaults to ``loss_fn``.
    grads_fn: the gradient pass of ``L_train`` (module docstring).
    val_grads_fn: the gradient pass of ``L_val``.

  Returns:
    ``step(state, train_batch, val_batch) -> (state, metrics)`` for a state
    from :func:`init_rarts`; metrics ``train_loss`` (:math:`L_{train}` at the
    old ``w``), ``val_loss`` (:math:`L_{val}` at the old ``y``), ``train_aux``,
    ``val_aux``, ``coupling`` (:math:`\|y - w\|^2` after the sweep).
  """
  _util.check_real("lam", lam, low=0.0, scalar=True, finite=True)
  _util.check_real("beta", beta, low=0.0, scalar=True, finite=True)
  if alpha_update not in ALPHA_UPDATES:
    raise ValueError(f"alpha_update must be one of {ALPHA_UPDATES}, got "
                     f"alpha_update={alpha_update!r}")
  val_weights_tx = weights_tx if val_weights_tx is None else val_weights_tx
  grads, val_loss_fn, val_grads = _train_val_grads(loss_fn, grads_fn, val_loss_fn, val_grads_fn)

  def step(state: SearchState, train_batch: Any, val_batch: Any) -> tuple[SearchState, dict]:
    if state.val_weights is None:
      raise ValueError("rarts_step needs a state from init_rarts (val_weights is None)")
    w, y, a = state.weights, state.val_weights, state.alphas
    # 1. w on the training batch.
    (train_loss, train_aux), (g, ga_train) = grads(w, a, train_batch)
    g_w = jax.tree.map(lambda gi, wi, yi: lam * gi + beta * (wi - yi), g, w, y)
    w, w_opt = _apply(weights_tx, g_w, state.weights_opt_state, w)
    # 2. y on the validation batch, coupled to the new w.
    (val_loss, val_aux), (g, ga_val) = val_grads(y, a, val_batch)
    g_y = jax.tree.map(lambda gi, yi, wi: gi + beta * (yi - wi), g, y, w)
    y, y_opt = _apply(val_weights_tx, g_y, state.val_weights_opt_state, y)
    # 3. alpha on L_val(y, alpha) + lam * L_train(w, alpha).
    if alpha_update == "gauss_seidel":  # at the new w and y: two more passes
      _, (_, ga_val) = val_grads(y, a, val_batch)
      _, (_, ga_train) = grads(w, a, train_batch)
    g_a = jax.tree.map(lambda v, t: v + lam * t, ga_val, ga_train)
    a, a_opt = _apply(alphas_tx, g_a, state.alphas_opt_state, a)
    new = SearchState(step=state.step + 1, weights=w, alphas=a, weights_opt_state=w_opt,
                      alphas_opt_state=a_opt, val_weights=y, val_weights_opt_state=y_opt)
    coupling = sum(jnp.sum(jnp.square(yi - wi))
                   for yi, wi in zip(jax.tree.leaves(y), jax.tree.leaves(w)))
    return new, {"train_loss": train_loss, "val_loss": val_loss, "train_aux": train_aux,
                 "val_aux": val_aux, "coupling": coupling}

  return step
