"""Which parameter axes shrink together, and which channels can go, read from a jaxpr.

The model is traced to a jaxpr whose inputs are its state leaves (every NNX
``Variable``: parameters and batch statistics) and the sample input. An abstract
interpreter then walks the equations and tracks, for every intermediate value:

* **channel labels** -- for each axis, ``None`` (a fixed axis: batch, space, or
  a width that compaction may not change) or an int array of union-find node
  ids, one per index along the axis. Every index of every axis of every state
  leaf starts as its own node; an operation that makes two indices the same
  channel (a conv's input feature and the incoming activation's feature, a
  bias and the value it is added to, the two operands of a residual add, ...)
  unites their nodes. A union with a fixed axis *pins* the group: it is never
  removed.
* **what is known about the value** -- values that do not depend on the input
  are computed concretely (parameters, BN ``scale * rsqrt(var + eps)``, ...).
  For input-dependent values (activations) the interpreter keeps, per channel,
  whether the channel is a constant over every unlabelled axis (batch and
  space) for every input, and which constant: exact zeros are found this way,
  e.g. ``relu(bn(conv(x)))`` for a channel whose kernel slice, BN scale and BN
  shift are zero.

A channel group may be removed when it is not pinned and wherever it is
*consumed* -- contracted by a conv or a dense layer (``conv_general_dilated``,
``dot_general``) -- its contribution is exactly zero: either the activation's
channel is the constant zero or the consumer's weights for it are all zero.
Elementwise operations, pooling, reshapes, pads and concatenations only move
the channel along; reductions over a channel axis, slices of it and other
operations whose result would change with the width pin it. A channel that is
a *nonzero* constant (BN scale zero, shift positive) is kept: see
``docs/compaction.md`` for why folding it into the consumer's bias is not exact
through zero-padded convolutions.

Any operation on an activation that the interpreter does not know raises
:class:`UnsupportedOperationError`, naming the primitive and its source line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend import core as jcore

from sparsejax import tree as tree_lib

__all__ = [
    "UnsupportedOperationError",
    "ChannelGroup",
    "Analysis",
    "analyze",
    "trace",
    "Traced",
]


class UnsupportedOperationError(ValueError):
  """The channel analysis met an operation it cannot follow channels through."""


# ----------------------------------------------------------------------------
# Tracing
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Traced:
  """A model in eval mode as a pure function of its state leaves.

  Attributes:
    jaxpr: the closed jaxpr of ``f(*leaves, *inputs) -> outputs``.
    paths: path string of every state leaf (``"features/0/conv/kernel"``), in
      jaxpr input order.
    leaves: the leaf values (arrays).
    is_param: whether each leaf is an ``nnx.Param``.
    num_inputs: how many model inputs follow the leaves.
    batch_size: leading-axis length of the first input.
  """
  jaxpr: Any
  paths: tuple[str, ...]
  leaves: tuple[Any, ...]
  is_param: tuple[bool, ...]
  num_inputs: int
  batch_size: int


def _check_model(model) -> None:
  """Raises ``TypeError`` unless ``model`` is an NNX module."""
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}: {model!r:.80}")


def _as_inputs(sample_input) -> tuple:
  items = tuple(sample_input) if isinstance(sample_input, (tuple, list)) else (sample_input,)
  if not items:
    raise ValueError("sample_input must be an array or a non-empty tuple of arrays, got ()")
  out = []
  for i, x in enumerate(items):
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
      try:
        x = np.asarray(x)
      except Exception:  # pylint: disable=broad-except
        x = None
      if x is None or not _is_numeric(x.dtype):
        raise TypeError(
            f"sample_input must be an array (or a tuple of arrays) with a leading batch axis; "
            f"item {i} is {type(items[i]).__name__}")
    if len(x.shape) == 0:
      raise ValueError(
          f"sample_input must have a leading batch axis; item {i} has shape {tuple(x.shape)}")
    out.append(jax.ShapeDtypeStruct(tuple(x.shape), x.dtype))
  return tuple(out)


def trace(model, sample_input) -> Traced:
  """Traces ``model`` (a copy switched to eval mode) on ``sample_input``'s shapes."""
  _check_model(model)
  inputs = _as_inputs(sample_input)
  m = nnx.clone(model)
  m.eval()
  graphdef, state = nnx.split(m)
  typed = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  leaves, treedef = jax.tree_util.tree_flatten(state)
  if len(typed) != len(leaves):
    raise TypeError(
        f"model state must hold one array per nnx.Variable; got {len(leaves)} leaves for "
        f"{len(typed)} variables")
  paths = tuple(tree_lib.path_str(p) for p, _ in typed)
  is_param = tuple(isinstance(v, nnx.Param) for _, v in typed)

  def fn(leaves, *xs):
    mm = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))
    return mm(*xs)

  from sparsejax.models import darts  # pylint: disable=import-outside-toplevel
  with darts.grouped_depthwise():  # its canonical form, whatever the backend
    closed = jax.make_jaxpr(fn)(list(leaves), *inputs)
  return Traced(closed, paths, tuple(leaves), is_param, len(inputs), int(inputs[0].shape[0]))


# ----------------------------------------------------------------------------
# Union-find over channel nodes
# ----------------------------------------------------------------------------

_PINNED, _BAD, _SEEN = 0, 1, 2


class _Groups:
  """Union-find over int node ids with three OR-ed flags per group."""

  def __init__(self):
    self.parent = np.zeros(1024, np.int64)
    self.flags = np.zeros((1024, 3), bool)
    self.n = 0

  def new(self, count: int, *, pinned: bool = False) -> np.ndarray:
    start = self.n
    while self.n + count > len(self.parent):
      grow = len(self.parent)
      self.parent = np.concatenate([self.parent, np.zeros(grow, np.int64)])
      self.flags = np.concatenate([self.flags, np.zeros((grow, 3), bool)])
    ids = np.arange(start, start + count, dtype=np.int64)
    self.parent[ids] = ids
    self.flags[ids] = False
    self.flags[ids, _PINNED] = pinned
    self.n += count
    return ids

  def find(self, ids) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    roots = ids.copy()
    while True:
      p = self.parent[roots]
      if np.array_equal(p, roots):
        break
      roots = p
    self.parent[ids] = roots  # path compression
    return roots

  def union(self, a: np.ndarray, b: np.ndarray) -> None:
    a = np.asarray(a, np.int64).ravel()
    b = np.asarray(b, np.int64).ravel()
    if a.shape != b.shape:
      raise AssertionError(f"internal: union of label arrays of sizes {a.size} and {b.size}")
    ra, rb = self.find(a), self.find(b)
    for x, y in zip(ra.tolist(), rb.tolist()):
      if x == y:
        continue
      x, y = int(self.find([x])[0]), int(self.find([y])[0])
      if x != y:
        self.parent[y] = x
        self.flags[x] |= self.flags[y]

  def mark(self, ids, flag: int) -> None:
    ids = np.asarray(ids, np.int64).ravel()
    if ids.size:
      self.flags[self.find(ids), flag] = True

  def flag(self, ids, flag: int) -> np.ndarray:
    return self.flags[self.find(np.asarray(ids, np.int64)), flag]


# ----------------------------------------------------------------------------
# Abstract values
# ----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _V:
  """An abstract value: labels per axis plus a concrete value or constant info.

  ``known`` holds the concrete value of an input-independent value. For an
  activation (``known is None``), ``cval``/``vary`` have the value's shape with
  every unlabelled axis collapsed to 1: ``vary`` is True where the value
  depends on the input (or is not uniform over the unlabelled axes), and
  elsewhere the value is the constant ``cval``.
  """
  shape: tuple[int, ...]
  dtype: Any
  labels: list
  known: Any = None
  cval: Any = None
  vary: Any = None

  @property
  def is_act(self) -> bool:
    return self.known is None

  @property
  def ndim(self) -> int:
    return len(self.shape)


def _cshape(shape, labels) -> tuple[int, ...]:
  return tuple(s if l is not None else 1 for s, l in zip(shape, labels))


def _is_numeric(dtype) -> bool:
  try:  # jax.dtypes.issubdtype: numpy's says bfloat16 is not a number
    return jax.dtypes.issubdtype(dtype, np.number) or np.dtype(dtype) == np.bool_
  except TypeError:
    return False


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``a != b`` with NaN equal to NaN (a NaN constant is uniform, not varying)."""
  ne = a != b
  if jax.dtypes.issubdtype(a.dtype, np.inexact):
    ne &= ~(np.isnan(a) & np.isnan(b))
  return ne


def _np(x) -> np.ndarray:
  return np.asarray(x)


def _zero_of(dtype):
  return np.zeros((), dtype)


# Elementwise primitives: the output element depends only on the operand
# elements at the same index (with size-1 broadcasting).
_ELEMENTWISE = frozenset("""
add add_any sub mul div rem pow max min nextafter atan2 and or xor not neg abs sign
floor ceil round is_finite exp exp2 log log1p expm1 tanh logistic sin cos tan asin
acos atan sinh cosh asinh acosh atanh sqrt rsqrt cbrt integer_pow square erf erfc
erf_inv lgamma digamma igamma igammac bessel_i0e bessel_i1e eq ne lt le gt ge
select_n clamp convert_element_type reduce_precision copy copy_p real imag conj
population_count clz shift_left shift_right_logical shift_right_arithmetic
sharding_constraint stop_gradient mesh_cast reshard
""".split())

# Primitives whose body is a sub-jaxpr run once on the operands.
_CALLS = frozenset(("jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
                    "custom_vjp_call", "custom_vjp_call_jaxpr", "checkpoint", "remat",
                    "remat2", "custom_lin"))

_REDUCE = frozenset(("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                     "reduce_or", "reduce_xor", "argmax", "argmin"))

_REDUCE_WINDOW = frozenset(("reduce_window_sum", "reduce_window_max", "reduce_window_min",
                            "reduce_window"))


def _np_dot_general(params, lhs, rhs):
  (lc, rc), (lb, rb) = params["dimension_numbers"]
  letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  ls = [next(letters) for _ in range(lhs.ndim)]
  rs = [next(letters) for _ in range(rhs.ndim)]
  for a, b in zip(list(lc) + list(lb), list(rc) + list(rb)):
    rs[b] = ls[a]
  out = ([ls[a] for a in lb] + [ls[a] for a in range(lhs.ndim) if a not in lc and a not in lb]
         + [rs[b] for b in range(rhs.ndim) if b not in rc and b not in rb])
  return np.einsum(f"{''.join(ls)},{''.join(rs)}->{''.join(out)}", lhs, rhs)


def _logistic(x):
  return 1.0 / (1.0 + np.exp(-x))


# numpy versions of cheap primitives, for constant values (no XLA compiles).
_NUMPY_OPS = {
    "add": lambda p, a, b: a + b,
    "add_any": lambda p, a, b: a + b,
    "sub": lambda p, a, b: a - b,
    "mul": lambda p, a, b: a * b,
    "div": lambda p, a, b: (np.true_divide(a, b) if np.issubdtype(a.dtype, np.inexact)
                            else np.trunc(np.true_divide(a, b)).astype(a.dtype)),
    "max": lambda p, a, b: np.maximum(a, b),
    "min": lambda p, a, b: np.minimum(a, b),
    "neg": lambda p, a: -a,
    "abs": lambda p, a: np.abs(a),
    "sign": lambda p, a: np.sign(a),
    "exp": lambda p, a: np.exp(a),
    "log": lambda p, a: np.log(a),
    "tanh": lambda p, a: np.tanh(a),
    "logistic": lambda p, a: _logistic(a),
    "sqrt": lambda p, a: np.sqrt(a),
    "rsqrt": lambda p, a: 1.0 / np.sqrt(a),
    "square": lambda p, a: a * a,
    "integer_pow": lambda p, a: a ** p["y"],
    "eq": lambda p, a, b: a == b,
    "ne": lambda p, a, b: a != b,
    "lt": lambda p, a, b: a < b,
    "le": lambda p, a, b: a <= b,
    "gt": lambda p, a, b: a > b,
    "ge": lambda p, a, b: a >= b,
    "and": lambda p, a, b: a & b,
    "or": lambda p, a, b: a | b,
    "not": lambda p, a: ~a,
    "select_n": lambda p, c, *cases: np.choose(c.astype(np.int64), cases),
    "convert_element_type": lambda p, a: a.astype(p["new_dtype"]),
    "copy": lambda p, a: a.copy(),
    "copy_p": lambda p, a: a.copy(),
    "dot_general": _np_dot_general,
    "reduce_sum": lambda p, a: np.sum(a, axis=tuple(p["axes"])),
    "reduce_max": lambda p, a: np.max(a, axis=tuple(p["axes"])),
    "reduce_min": lambda p, a: np.min(a, axis=tuple(p["axes"])),
    "reduce_prod": lambda p, a: np.prod(a, axis=tuple(p["axes"])),
    "reduce_and": lambda p, a: np.all(a, axis=tuple(p["axes"])),
    "reduce_or": lambda p, a: np.any(a, axis=tuple(p["axes"])),
}


def _where(eqn) -> str:
  try:
    from jax._src import source_info_util  # pylint: disable=import-outside-toplevel
    return source_info_util.summarize(eqn.source_info)
  except Exception:  # pylint: disable=broad-except
    return "<unknown location>"


def _sub_jaxpr(eqn):
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    j = eqn.params.get(key)
    if isinstance(j, jcore.ClosedJaxpr):
      return j.jaxpr, list(j.consts)
    if isinstance(j, jcore.Jaxpr):
      if j.constvars:
        return None
      return j, []
  return None


# ----------------------------------------------------------------------------
# The interpreter
# ----------------------------------------------------------------------------


class _Interpreter:
  """Walks a jaxpr with :class:`_V` values; fills ``self.groups``."""

  def __init__(self, *, resizable_padding: bool = True):
    self.groups = _Groups()
    self.resizable_padding = resizable_padding
    self.fresh_ids: list[np.ndarray] = []
    self.context: list[str] = []
    self.callers: list[Any] = []  # enclosing call equations, outermost first

  # -- errors -----------------------------------------------------------------

  def unsupported(self, eqn, why: str):
    inside = f" (inside {' > '.join(self.context)})" if self.context else ""
    where = ""
    for e in [eqn] + self.callers[::-1]:
      where = _where(e)
      if where.strip():
        break
    raise UnsupportedOperationError(
        f"sparsejax.compact cannot follow channels through primitive "
        f"'{eqn.primitive.name}' at {where or '<unknown location>'}{inside}: {why}. The analysis "
        f"understands convolutions, dense layers (dot_general), elementwise ops, "
        f"pooling, reductions over non-channel axes, reshape/flatten, transpose, "
        f"broadcast, slice, pad, concatenate and jit/custom_jvp calls; rewrite the "
        f"model with those, or compact it by hand.")

  # -- labels -------------------------------------------------------------------

  def pin(self, labels) -> None:
    if labels is not None:
      self.groups.mark(labels, _PINNED)

  def pin_all(self, v: _V) -> None:
    for l in v.labels:
      self.pin(l)

  def unite(self, arrays: Sequence[Any]) -> Any:
    """Unites same-length label arrays; a ``None`` (fixed axis) pins them and wins."""
    present = [a for a in arrays if a is not None]
    if not present:
      return None
    first = present[0]
    for a in present[1:]:
      self.groups.union(first, a)
    if len(present) < len(arrays):
      self.pin(first)
      return None
    return first

  def fresh(self, n: int) -> np.ndarray:
    """Nodes for channels a constant fills (pads, broadcasts): resizable or pinned."""
    ids = self.groups.new(n, pinned=not self.resizable_padding)
    self.fresh_ids.append(ids)
    return ids

  def seen(self, labels) -> None:
    for l in labels:
      if l is not None:
        self.groups.mark(l, _SEEN)

  def bad(self, labels, not_ok: np.ndarray) -> None:
    if labels is not None:
      self.groups.mark(np.asarray(labels)[np.asarray(not_ok, bool)], _BAD)

  # -- values ---------------------------------------------------------------------

  def make_act(self, shape, dtype, labels, cval, vary) -> _V:
    labels = list(labels)
    cs = _cshape(shape, labels)
    cval = np.broadcast_to(np.asarray(cval, dtype if _is_numeric(dtype) else None), cs).copy()
    vary = np.broadcast_to(np.asarray(vary, bool), cs).copy()
    self.seen(labels)
    return _V(tuple(shape), dtype, labels, None, cval, vary)

  def make_known(self, value, labels) -> _V:
    return _V(tuple(np.shape(value)), value.dtype, list(labels), value, None, None)

  def bind(self, eqn, arrays) -> list:
    """Evaluates ``eqn`` on concrete operands (numpy for the common cheap cases)."""
    fn = _NUMPY_OPS.get(eqn.primitive.name)
    if fn is not None and all(isinstance(a, (np.ndarray, np.generic)) for a in arrays):
      out_dtype = eqn.outvars[0].aval.dtype
      with np.errstate(all="ignore"):
        out = fn(eqn.params, *arrays)
      return [np.asarray(out).astype(out_dtype, copy=False)]
    out = eqn.primitive.bind(*[jnp.asarray(a) for a in arrays], **eqn.params)
    return list(out) if eqn.primitive.multiple_results else [out]

  def const_view(self, v: _V, out_labels, out_shape):
    """``(cval, vary, zero)`` of operand ``v`` on the output's collapsed shape.

    Axes that are unlabelled in the output collapse to one entry; an operand
    that is not uniform along such an axis varies there.
    """
    nd = len(out_shape)
    if v.is_act:
      val, vary = v.cval, v.vary
    else:
      val = _np(v.known)
      if not _is_numeric(val.dtype):
        raise AssertionError("internal: const view of a non-numeric known value")
      vary = np.zeros(val.shape, bool)
    if val.ndim == 0:
      val, vary = val.reshape((1,) * nd), vary.reshape((1,) * nd)
    zero = (val == 0) & ~vary
    for ax in range(nd):
      if out_labels[ax] is None and val.shape[ax] > 1:
        first = val.take([0], axis=ax)
        nonu = np.any(_differs(val, first), axis=ax, keepdims=True)
        vary = np.any(vary, axis=ax, keepdims=True) | nonu
        zero = np.all(zero, axis=ax, keepdims=True)
        val = first
    return val, vary, zero & ~vary

  def known_zero_along(self, v: _V, axis: int) -> np.ndarray:
    """Per index along ``axis``: is the whole slice an exact zero (for all inputs)?"""
    n = v.shape[axis]
    if v.is_act:
      z = (v.cval == 0) & ~v.vary
      others = tuple(a for a in range(v.ndim) if a != axis)
      zz = np.all(z, axis=others) if others else z
      return np.broadcast_to(zz.reshape(-1), (n,)).copy()
    val = _np(v.known)
    others = tuple(a for a in range(val.ndim) if a != axis)
    zz = np.all(val == 0, axis=others) if others else (val == 0)
    return np.broadcast_to(zz.reshape(-1), (n,)).copy()

  # -- the walk ----------------------------------------------------------------------

  def run(self, jaxpr, consts, args: Sequence[_V]) -> list[_V]:
    env: dict[Any, _V] = {}

    def read(a):
      if isinstance(a, jcore.Literal):
        val = np.asarray(a.val, dtype=a.aval.dtype)
        return self.make_known(val, [None] * val.ndim)
      return env[a]

    for var, c in zip(jaxpr.constvars, consts):
      c = _np(c) if _is_numeric(getattr(c, "dtype", None)) else c
      env[var] = self.make_known(c, [None] * np.ndim(c))
    for var, a in zip(jaxpr.invars, args):
      env[var] = a
    for eqn in jaxpr.eqns:
      ins = [read(a) for a in eqn.invars]
      outs = self.eqn(eqn, ins)
      for var, o in zip(eqn.outvars, outs):
        if not isinstance(var, jcore.DropVar):
          env[var] = o
    return [read(a) for a in jaxpr.outvars]

  def eqn(self, eqn, ins: list[_V]) -> list[_V]:
    name = eqn.primitive.name
    all_known = all(not v.is_act for v in ins)
    if name in _CALLS:
      sub = _sub_jaxpr(eqn)
      if sub is None:
        if all_known:
          return self.opaque_known(eqn, ins)
        self.unsupported(eqn, "its body is not a closed jaxpr")
      jaxpr, consts = sub
      if len(jaxpr.invars) != len(ins):
        self.unsupported(eqn, "its body takes a different number of operands")
      self.context.append(f"{name}[{eqn.params.get('name', '')}]".replace("[]", ""))
      self.callers.append(eqn)
      try:
        return self.run(jaxpr, consts, ins)
      finally:
        self.context.pop()
        self.callers.pop()
    rule = _RULES.get(name)
    if rule is None and name in _ELEMENTWISE:
      rule = _Interpreter.elementwise
    if all_known and (rule is None or not all(_is_numeric(v.dtype) for v in ins)
                      or not all(_is_numeric(o.aval.dtype) for o in eqn.outvars)):
      return self.opaque_known(eqn, ins)
    if rule is None:
      self.unsupported(eqn, "no channel rule for this primitive on an input-dependent value")
    return rule(self, eqn, ins)

  def opaque_known(self, eqn, ins: list[_V]) -> list[_V]:
    """Evaluates an input-independent equation; its labels are pinned."""
    for v in ins:
      self.pin_all(v)
    outs = self.bind(eqn, [v.known for v in ins])
    res = []
    for o in outs:
      o = _np(o) if _is_numeric(o.dtype) else o
      res.append(self.make_known(o, [None] * np.ndim(o)))
    return res

  # -- rules ----------------------------------------------------------------------

  def elementwise(self, eqn, ins: list[_V]) -> list[_V]:
    out_aval = eqn.outvars[0].aval
    out_shape = tuple(out_aval.shape)
    nd = len(out_shape)
    labels = []
    for ax in range(nd):
      parts = []
      for v in ins:
        if v.ndim == 0:
          continue
        if v.ndim != nd:
          self.unsupported(eqn, f"operands of rank {v.ndim} and {nd}")
        if v.shape[ax] == out_shape[ax]:
          parts.append(v.labels[ax])
        elif v.labels[ax] is not None:  # a size-1 labelled axis broadcast
          self.pin(v.labels[ax])
      # A fixed axis of a known constant of size 1 broadcasts; of full size it pins.
      labels.append(self.unite(parts) if parts else None)
    if all(not v.is_act for v in ins):
      out = _np(self.bind(eqn, [v.known for v in ins])[0])
      return [self.make_known(out, labels)]
    cs = _cshape(out_shape, labels)
    vals, varies, zeros = [], [], []
    for v, invar in zip(ins, eqn.invars):
      c, vy, z = self.const_view(v, labels, out_shape)
      dt = invar.aval.dtype
      vals.append(np.broadcast_to(np.where(vy, _zero_of(dt), c).astype(dt), cs))
      varies.append(np.broadcast_to(vy, cs))
      zeros.append(np.broadcast_to(z, cs))
    vary = np.logical_or.reduce(varies) if varies else np.zeros(cs, bool)
    with np.errstate(all="ignore"):
      cval = _np(self.bind(eqn, vals)[0])
    anyzero = None
    if eqn.primitive.name == "mul":
      anyzero = np.logical_or.reduce(zeros)
    elif eqn.primitive.name == "div" and not ins[1].is_act:
      # 0 / d is 0 wherever the known divisor d is finite and nonzero at every
      # position the collapsed entry stands for (e.g. avg_pool's per-position
      # counts with count_include_pad=False).
      d = _np(ins[1].known)
      d = d.reshape((1,) * (nd - d.ndim) + d.shape)
      ok = (d != 0) & np.isfinite(d)
      for ax in range(nd):
        if labels[ax] is None and ok.shape[ax] > 1:
          ok = np.all(ok, axis=ax, keepdims=True)
      anyzero = zeros[0] & np.broadcast_to(ok, cs)
    if anyzero is not None:
      vary = vary & ~anyzero
      cval = np.where(anyzero, _zero_of(cval.dtype), cval)
    return [self.make_act(out_shape, out_aval.dtype, labels, cval, vary)]

  def conv(self, eqn, ins: list[_V]) -> list[_V]:
    lhs, rhs = ins
    p = eqn.params
    out_aval = eqn.outvars[0].aval
    out_shape = tuple(out_aval.shape)
    lspec, rspec, ospec = p["dimension_numbers"]
    lf, ro, ri, of = lspec[1], rspec[0], rspec[1], ospec[1]
    groups = int(p["feature_group_count"])
    if int(p["batch_group_count"]) != 1:
      self.unsupported(eqn, "batch_group_count != 1")
    if rhs.is_act:
      self.unsupported(eqn, "the kernel depends on the input")
    c_in, n_out, n_in = lhs.shape[lf], rhs.shape[ro], rhs.shape[ri]
    kernel = _np(rhs.known)
    spatial = tuple(a for a in range(kernel.ndim) if a not in (ro, ri))
    nz = np.any(kernel != 0, axis=spatial) if spatial else kernel != 0
    if ri > ro:
      nz = nz.T  # nz[i, o]: kernel slice (input i, output o) is not all zero
    # Full (c_in, n_out) connectivity, block-diagonal for grouped convs.
    per_group_out = n_out // groups
    conn = np.zeros((c_in, n_out), bool)
    for g in range(groups):
      conn[g * n_in:(g + 1) * n_in, g * per_group_out:(g + 1) * per_group_out] = \
          nz[:, g * per_group_out:(g + 1) * per_group_out]
    out_labels = [None] * len(out_shape)
    depthwise = groups > 1 and n_in == 1 and n_out == c_in
    if groups == 1:
      lab = self.unite([lhs.labels[lf], rhs.labels[ri]])
      out_labels[of] = rhs.labels[ro]
    elif depthwise:
      lab = None
      out_labels[of] = self.unite([lhs.labels[lf], rhs.labels[ro]])
    else:
      lab = None
      self.pin(lhs.labels[lf])
      self.pin_all(rhs)
    for ax, l in enumerate(lhs.labels):
      if ax != lf and l is not None:
        self.pin(l)  # a batch or spatial axis cannot shrink
    for ax, l in enumerate(rhs.labels):
      if ax not in (ro, ri) and l is not None:
        self.pin(l)
    if not lhs.is_act:
      out = _np(self.bind(eqn, [lhs.known, rhs.known])[0])
      if groups == 1:
        self.pin(lab)
      return [self.make_known(out, out_labels)]
    c, vy, z = self.const_view(lhs, lhs.labels, lhs.shape)
    for ax in range(lhs.ndim):  # collapse any (pinned) labelled non-feature axis
      if ax != lf and c.shape[ax] > 1:
        first = c.take([0], axis=ax)
        vy = np.any(vy, axis=ax, keepdims=True) | np.any(_differs(c, first), axis=ax, keepdims=True)
        z = np.all(z, axis=ax, keepdims=True) & ~vy
        c = first
    c = np.broadcast_to(c.reshape(-1), (c_in,))
    vy = np.broadcast_to(vy.reshape(-1), (c_in,))
    z = np.broadcast_to(z.reshape(-1), (c_in,))
    if groups == 1:
      ok = z | ~conn.any(axis=1)
      self.bad(lab, ~ok)
    vary_out = (vy[:, None] & conn).any(axis=0)
    cval_out = np.zeros((n_out,), out_aval.dtype)
    nonzero_const = ~vy & (c != 0)
    if not vary_out.all() and (nonzero_const[:, None] & conn).any():
      shape1 = list(lhs.shape)
      shape1[lspec[0]] = 1
      fill = np.where(vy, _zero_of(c.dtype), c).astype(eqn.invars[0].aval.dtype)
      bshape = [1] * len(shape1)
      bshape[lf] = c_in
      x1 = np.broadcast_to(fill.reshape(bshape), shape1)
      y1 = _np(self.bind(eqn, [x1, kernel])[0])
      y1 = np.moveaxis(y1, of, -1).reshape(-1, n_out)
      nonuniform = np.any(y1 != y1[:1], axis=0)
      vary_out = vary_out | nonuniform
      cval_out = y1[0]
    ocs = [1] * len(out_shape)
    ocs[of] = n_out
    if out_labels[of] is None:
      # Unlabelled output channels: uniform only if all channels agree.
      if vary_out.any() or np.any(cval_out != cval_out[:1]):
        vary_out, cval_out = np.ones(1, bool), np.zeros(1, out_aval.dtype)
      else:
        vary_out, cval_out = vary_out[:1], cval_out[:1]
      ocs[of] = 1
    return [self.make_act(out_shape, out_aval.dtype, out_labels,
                          cval_out.reshape(ocs), vary_out.reshape(ocs))]

  def dot(self, eqn, ins: list[_V]) -> list[_V]:
    lhs, rhs = ins
    out_aval = eqn.outvars[0].aval
    out_shape = tuple(out_aval.shape)
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lc, rc, lb, rb = map(tuple, (lc, rc, lb, rb))
    lfree = [a for a in range(lhs.ndim) if a not in lc and a not in lb]
    rfree = [a for a in range(rhs.ndim) if a not in rc and a not in rb]
    both_known = not lhs.is_act and not rhs.is_act
    out_labels = []
    for a, b in zip(lb, rb):
      out_labels.append(self.unite([lhs.labels[a], rhs.labels[b]]))
    out_labels += [lhs.labels[a] for a in lfree] + [rhs.labels[b] for b in rfree]
    contracted = []
    for a, b in zip(lc, rc):
      lab = self.unite([lhs.labels[a], rhs.labels[b]])
      contracted.append((a, b, lab))
      if both_known:
        self.pin(lab)
    if both_known:
      out = _np(self.bind(eqn, [lhs.known, rhs.known])[0])
      return [self.make_known(out, out_labels)]
    # With no contracted axis the product is elementwise (an outer or
    # batched product), zero only where a factor is: not "all terms zero".
    all_ok = bool(contracted)
    for a, b, lab in contracted:
      ok = self.known_zero_along(lhs, a) | self.known_zero_along(rhs, b)
      self.bad(lab, ~ok)
      all_ok &= bool(ok.all())
    cs = _cshape(out_shape, out_labels)
    if lhs.is_act and rhs.is_act:
      vary = np.zeros(cs, bool) if all_ok else np.ones(cs, bool)
      return [self.make_act(out_shape, out_aval.dtype, out_labels, np.zeros(cs, out_aval.dtype),
                            vary)]
    act_is_lhs = lhs.is_act
    act, known = (lhs, rhs) if act_is_lhs else (rhs, lhs)
    full_axes = set(lc + lb) if act_is_lhs else set(rc + rb)
    tshape = tuple(act.shape[a] if a in full_axes else act.cval.shape[a]
                   for a in range(act.ndim))
    c = np.broadcast_to(act.cval, tshape)
    vy = np.broadcast_to(act.vary, tshape)
    fill = np.where(vy, _zero_of(c.dtype), c).astype(act.dtype)
    kval = _np(known.known)
    knz = (kval != 0).astype(np.float32)
    pair = (fill, kval) if act_is_lhs else (kval, fill)
    vpair = (vy.astype(np.float32), knz) if act_is_lhs else (knz, vy.astype(np.float32))
    with np.errstate(all="ignore"):
      vary = _np_dot_general(eqn.params, *vpair) > 0
      if (~vy & (c != 0)).any():
        cval = _np(self.bind(eqn, pair)[0])
      else:
        cval = np.zeros(vary.shape, out_aval.dtype)
    # Collapse unlabelled output axes: the value must be uniform along them.
    for ax in range(len(out_shape)):
      if out_labels[ax] is None and cval.shape[ax] > 1:
        first = cval.take([0], axis=ax)
        nonu = np.any(_differs(cval, first), axis=ax, keepdims=True)
        vary = np.any(vary, axis=ax, keepdims=True) | nonu
        cval = first
    return [self.make_act(out_shape, out_aval.dtype, out_labels, cval, vary)]

  def reduce(self, eqn, ins: list[_V]) -> list[_V]:
    (v,) = ins
    axes = tuple(int(a) for a in eqn.params["axes"])
    out_aval = eqn.outvars[0].aval
    for a in axes:
      self.pin(v.labels[a])
    labels = [l for a, l in enumerate(v.labels) if a not in axes]
    if not v.is_act:
      out = _np(self.bind(eqn, [v.known])[0])
      return [self.make_known(out, labels)]
    tshape = tuple(v.shape[a] if a in axes else v.cval.shape[a] for a in range(v.ndim))
    c = np.broadcast_to(v.cval, tshape)
    vy = np.broadcast_to(v.vary, tshape)
    fill = np.where(vy, _zero_of(c.dtype), c).astype(v.dtype)
    with np.errstate(all="ignore"):
      cval = _np(self.bind(eqn, [fill])[0])
    vary = np.any(vy, axis=axes) if axes else vy
    # Labels of reduced axes were pinned; the output keeps the rest.
    out_cs = _cshape(tuple(out_aval.shape), labels)
    cval = cval.reshape(out_cs) if cval.size == int(np.prod(out_cs)) else cval
    return [self.make_act(tuple(out_aval.shape), out_aval.dtype, labels, cval,
                          np.reshape(vary, out_cs))]

  def reduce_window(self, eqn, ins: list[_V]) -> list[_V]:
    name = eqn.primitive.name
    p = eqn.params
    if name == "reduce_window" and len(eqn.outvars) != 1:
      self.unsupported(eqn, "variadic reduce_window")
    v = ins[0]
    out_aval = eqn.outvars[0].aval
    win, strides, pad = p["window_dimensions"], p["window_strides"], p["padding"]
    bdil, wdil = p.get("base_dilation") or (1,) * v.ndim, p.get("window_dilation") or (1,) * v.ndim
    labels = []
    for a, l in enumerate(v.labels):
      simple = (win[a] == 1 and strides[a] == 1 and tuple(pad[a]) == (0, 0) and bdil[a] == 1
                and wdil[a] == 1)
      if l is not None and not simple:
        self.pin(l)
        l = None
      labels.append(l)
    if not v.is_act:
      if any(not isinstance(x, _V) for x in ins):
        self.unsupported(eqn, "unexpected operands")
      out = _np(self.bind(eqn, [x.known for x in ins])[0])
      return [self.make_known(out, labels)]
    cs = _cshape(tuple(out_aval.shape), labels)
    cval = v.cval.reshape(v.cval.shape)
    vary = v.vary.copy()
    # Axes that lost their labels collapse to a single uniform entry.
    for a in range(v.ndim):
      if labels[a] is None and cval.shape[a] > 1:
        first = cval.take([0], axis=a)
        vary = np.any(vary, axis=a, keepdims=True) | np.any(_differs(cval, first), axis=a, keepdims=True)
        cval = first
    padded = any(tuple(pad[a]) != (0, 0) or bdil[a] != 1 for a in range(v.ndim))
    count = int(np.prod([win[a] for a in range(v.ndim) if labels[a] is None]))
    zero = (cval == 0) & ~vary
    if name == "reduce_window_sum":
      cval = cval * count
      if padded:
        vary = vary | ~zero
    elif name in ("reduce_window_max", "reduce_window_min"):
      extent = [(win[a] - 1) * wdil[a] + 1 for a in range(v.ndim)]
      if any(max(pad[a]) >= extent[a] for a in range(v.ndim)) or any(
          bdil[a] != 1 for a in range(v.ndim)):
        vary = np.ones_like(vary)
    else:
      vary = np.ones_like(vary)
    return [self.make_act(tuple(out_aval.shape), out_aval.dtype, labels,
                          cval.reshape(cs), vary.reshape(cs))]

  def reshape(self, eqn, ins: list[_V]) -> list[_V]:
    v = ins[0]
    p = eqn.params
    if p.get("dimensions") is not None:
      self.unsupported(eqn, "reshape with a dimensions permutation")
    out_aval = eqn.outvars[0].aval
    out_shape = tuple(out_aval.shape)
    labels: list = [None] * len(out_shape)
    labelled = [a for a, l in enumerate(v.labels) if l is not None]
    if v.is_act and len(labelled) > 1:
      self.unsupported(eqn, "reshape of an activation with more than one channel axis")
    # For an activation: per-output-axis index into the (single) labelled axis.
    index_along: dict[int, np.ndarray] = {}
    collapse_all = False
    for bin_, bout in _reshape_blocks(v.shape, out_shape):
      lab_in = [a for a in bin_ if v.labels[a] is not None]
      if not lab_in:
        continue
      if len(lab_in) > 1 or not bout:
        for a in lab_in:
          self.pin(v.labels[a])
        collapse_all = collapse_all or v.is_act
        continue
      a = lab_in[0]
      in_sizes = [v.shape[x] for x in bin_]
      out_sizes = [out_shape[x] for x in bout]
      pos = bin_.index(a)
      idx_shape = [1] * len(bin_)
      idx_shape[pos] = v.shape[a]
      grid = np.broadcast_to(np.arange(v.shape[a]).reshape(idx_shape), in_sizes)
      grid = grid.reshape(out_sizes)
      found = None
      for k, j in enumerate(bout):
        along = grid[tuple(slice(None) if kk == k else 0 for kk in range(len(bout)))]
        shp = [1] * len(bout)
        shp[k] = out_sizes[k]
        if np.array_equal(grid, np.broadcast_to(along.reshape(shp), out_sizes)):
          found = (j, along)
          break
      if found is None:
        self.pin(v.labels[a])
        collapse_all = collapse_all or v.is_act
        continue
      j, along = found
      labels[j] = np.asarray(v.labels[a])[along]
      index_along[j] = along
    if not v.is_act:
      out = _np(v.known).reshape(out_shape)
      return [self.make_known(out, labels)]
    cs = _cshape(out_shape, labels)
    if labelled and index_along:
      (a,) = labelled
      (j, along), = index_along.items()
      c = v.cval.reshape(-1)[along]
      vy = v.vary.reshape(-1)[along]
      cval, vary = c.reshape(cs), vy.reshape(cs)
    else:
      if v.vary.any() or np.any(v.cval != v.cval.reshape(-1)[:1]):
        cval, vary = np.zeros(cs, v.cval.dtype), np.ones(cs, bool)
      else:
        cval, vary = np.broadcast_to(v.cval.reshape(-1)[:1].reshape((1,) * len(cs)), cs), \
            np.zeros(cs, bool)
    del collapse_all
    return [self.make_act(out_shape, out_aval.dtype, labels, cval, vary)]

  def squeeze(self, eqn, ins: list[_V]) -> list[_V]:
    (v,) = ins
    dims = tuple(int(d) % max(v.ndim, 1) for d in eqn.params["dimensions"])
    for d in dims:
      self.pin(v.labels[d])
    labels = [l for a, l in enumerate(v.labels) if a not in dims]
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if not v.is_act:
      return [self.make_known(_np(v.known).reshape(out_shape), labels)]
    keep = [a for a in range(v.ndim) if a not in dims]
    cval = v.cval.reshape([v.cval.shape[a] for a in keep])
    vary = v.vary.reshape([v.vary.shape[a] for a in keep])
    return [self.make_act(out_shape, v.dtype, labels, cval, vary)]

  def transpose(self, eqn, ins: list[_V]) -> list[_V]:
    (v,) = ins
    perm = tuple(eqn.params["permutation"])
    labels = [v.labels[a] for a in perm]
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if not v.is_act:
      return [self.make_known(np.transpose(_np(v.known), perm), labels)]
    return [self.make_act(out_shape, v.dtype, labels, np.transpose(v.cval, perm),
                          np.transpose(v.vary, perm))]

  def broadcast_in_dim(self, eqn, ins: list[_V]) -> list[_V]:
    v = ins[0]
    if len(ins) > 1:
      self.unsupported(eqn, "dynamic shapes")
    shape = tuple(eqn.params["shape"])
    bdims = tuple(eqn.params["broadcast_dimensions"])
    labels: list = [None] * len(shape)
    for i, d in enumerate(bdims):
      if v.shape[i] == shape[d]:
        labels[d] = v.labels[i]
      else:
        self.pin(v.labels[i])
    if not v.is_act:
      for d in range(len(shape)):
        if labels[d] is None and shape[d] > 1 and (d not in bdims or v.shape[bdims.index(d)] == 1):
          labels[d] = self.fresh(shape[d])  # a copy of a constant resizes with its channel
      out = np.broadcast_to(_np(v.known).reshape(
          [v.shape[bdims.index(d)] if d in bdims else 1 for d in range(len(shape))]), shape)
      return [self.make_known(np.array(out), labels)]
    cs = _cshape(shape, labels)
    src_shape = [v.cval.shape[bdims.index(d)] if d in bdims else 1 for d in range(len(shape))]
    cval = v.cval.reshape(src_shape)
    vary = v.vary.reshape(src_shape)
    # Axes that were labelled in v but lost their label (size-1 broadcast) collapse.
    return [self.make_act(shape, v.dtype, labels, np.broadcast_to(cval, cs),
                          np.broadcast_to(vary, cs))]

  def slice(self, eqn, ins: list[_V]) -> list[_V]:
    (v,) = ins
    p = eqn.params
    start, limit = p["start_indices"], p["limit_indices"]
    strides = p["strides"] or (1,) * v.ndim
    sl = tuple(slice(int(s), int(e), int(st)) for s, e, st in zip(start, limit, strides))
    labels = []
    for a, l in enumerate(v.labels):
      if l is None:
        labels.append(None)
        continue
      full = int(start[a]) == 0 and int(limit[a]) == v.shape[a] and int(strides[a]) == 1
      if not full:
        self.pin(l)
      labels.append(np.asarray(l)[sl[a]])
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if not v.is_act:
      return [self.make_known(_np(v.known)[sl], labels)]
    csl = tuple(sl[a] if v.labels[a] is not None else slice(None) for a in range(v.ndim))
    return [self.make_act(out_shape, v.dtype, labels, v.cval[csl], v.vary[csl])]

  def pad(self, eqn, ins: list[_V]) -> list[_V]:
    v, pv = ins
    if pv.is_act:
      self.unsupported(eqn, "the padding value depends on the input")
    padval = _np(pv.known).reshape(())
    config = [tuple(int(x) for x in c) for c in eqn.params["padding_config"]]
    labels = []
    for a, (lo, hi, interior) in enumerate(config):
      l = v.labels[a]
      if l is None:
        labels.append(None)
      elif lo == 0 and interior == 0 and hi >= 0:
        # Zero channels appended at the end (option-A shortcut): fresh nodes,
        # which unite with the wide stream's channels where the result is added.
        labels.append(np.concatenate([np.asarray(l), self.fresh(hi)]) if hi else l)
      else:
        self.pin(l)
        labels.append(None)
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if not v.is_act:
      out = _np(self.bind(eqn, [v.known, pv.known])[0])
      return [self.make_known(out, labels)]
    cval, vary = v.cval, v.vary
    for a, (lo, hi, interior) in enumerate(config):
      if v.labels[a] is None:
        if (lo, hi, interior) != (0, 0, 0) and v.shape[a] > 0:
          vary = vary | (cval != padval)
      elif labels[a] is not None and hi:
        shp = list(cval.shape)
        shp[a] = hi
        cval = np.concatenate([cval, np.full(shp, padval, cval.dtype)], axis=a)
        vary = np.concatenate([vary, np.zeros(shp, bool)], axis=a)
      elif labels[a] is None:
        first = cval.take([0], axis=a)
        vary = np.any(vary, axis=a, keepdims=True) | np.any(_differs(cval, first), axis=a, keepdims=True)
        vary = vary | (first != padval)
        cval = first
    return [self.make_act(out_shape, v.dtype, labels, cval, vary)]

  def concatenate(self, eqn, ins: list[_V]) -> list[_V]:
    dim = int(eqn.params["dimension"])
    out_aval = eqn.outvars[0].aval
    out_shape = tuple(out_aval.shape)
    nd = len(out_shape)
    labels: list = []
    for ax in range(nd):
      if ax == dim:
        if all(v.labels[ax] is None for v in ins):
          labels.append(None)
        else:
          parts = []
          for v in ins:
            l = v.labels[ax]
            if l is None:
              l = self.groups.new(v.shape[ax], pinned=True)
            parts.append(np.asarray(l))
          labels.append(np.concatenate(parts))
      else:
        labels.append(self.unite([v.labels[ax] for v in ins]))
    if all(not v.is_act for v in ins):
      out = np.concatenate([_np(v.known) for v in ins], axis=dim)
      return [self.make_known(out, labels)]
    cs = _cshape(out_shape, labels)
    cvals, varies = [], []
    for v in ins:
      part_labels = list(labels)
      part_shape = list(out_shape)
      part_shape[dim] = v.shape[dim]
      if labels[dim] is not None:
        part_labels[dim] = np.zeros(v.shape[dim])  # placeholder: keep the axis
      c, vy, _ = self.const_view(v, part_labels, tuple(part_shape))
      pcs = _cshape(tuple(part_shape), part_labels)
      cvals.append(np.broadcast_to(np.where(vy, _zero_of(c.dtype), c).astype(out_aval.dtype),
                                   pcs))
      varies.append(np.broadcast_to(vy, pcs))
    if labels[dim] is not None:
      cval = np.concatenate(cvals, axis=dim)
      vary = np.concatenate(varies, axis=dim)
    else:
      vary = np.logical_or.reduce(varies)
      cval = cvals[0]
      for c in cvals[1:]:
        vary = vary | (c != cval)
    return [self.make_act(out_shape, out_aval.dtype, labels, cval.reshape(cs), vary.reshape(cs))]

  def split(self, eqn, ins: list[_V]) -> list[_V]:
    (v,) = ins
    axis = int(eqn.params["axis"])
    sizes = [int(s) for s in eqn.params["sizes"]]
    self.pin(v.labels[axis])
    outs, start = [], 0
    for s, var in zip(sizes, eqn.outvars):
      sl = tuple(slice(start, start + s) if a == axis else slice(None) for a in range(v.ndim))
      labels = [np.asarray(l)[sl[a]] if l is not None else None for a, l in enumerate(v.labels)]
      if not v.is_act:
        outs.append(self.make_known(_np(v.known)[sl], labels))
      else:
        csl = tuple(sl[a] if v.labels[a] is not None else slice(None) for a in range(v.ndim))
        outs.append(self.make_act(tuple(var.aval.shape), v.dtype, labels, v.cval[csl],
                                  v.vary[csl]))
      start += s
    return outs

  def rev(self, eqn, ins: list[_V]) -> list[_V]:
    (v,) = ins
    dims = tuple(eqn.params["dimensions"])
    for d in dims:
      self.pin(v.labels[d])
    if not v.is_act:
      return [self.make_known(np.flip(_np(v.known), dims), list(v.labels))]
    return [self.make_act(v.shape, v.dtype, v.labels, np.flip(v.cval, dims),
                          np.flip(v.vary, dims))]


_RULES = {
    "conv_general_dilated": _Interpreter.conv,
    "dot_general": _Interpreter.dot,
    "reshape": _Interpreter.reshape,
    "squeeze": _Interpreter.squeeze,
    "transpose": _Interpreter.transpose,
    "broadcast_in_dim": _Interpreter.broadcast_in_dim,
    "slice": _Interpreter.slice,
    "pad": _Interpreter.pad,
    "concatenate": _Interpreter.concatenate,
    "split": _Interpreter.split,
    "rev": _Interpreter.rev,
    **{name: _Interpreter.reduce for name in _REDUCE},
    **{name: _Interpreter.reduce_window for name in _REDUCE_WINDOW},
}


def _reshape_blocks(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
  """Pairs groups of input axes with groups of output axes of equal total size."""
  a, b = list(a), list(b)
  i = j = 0
  blocks = []
  while i < len(a) or j < len(b):
    if i < len(a) and a[i] == 1 and (j >= len(b) or b[j] != 1):
      blocks.append(([i], []))
      i += 1
      continue
    if j < len(b) and b[j] == 1 and (i >= len(a) or a[i] != 1):
      blocks.append(([], [j]))
      j += 1
      continue
    if i >= len(a) or j >= len(b):
      raise AssertionError(f"internal: cannot pair reshape {a} -> {b}")
    bi, bj, pi, pj = [i], [j], a[i], b[j]
    i, j = i + 1, j + 1
    while pi != pj:
      if pi < pj:
        bi.append(i)
        pi *= a[i]
        i += 1
      else:
        bj.append(j)
        pj *= b[j]
        j += 1
    blocks.append((bi, bj))
  return blocks


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """A set of parameter-axis indices that are one channel and go together.

  Attributes:
    members: ``(path, axis, index)`` of every state-leaf entry in the group,
      e.g. ``("features/0/conv/kernel", 3, 5)``, ``("features/0/bn/scale", 0,
      5)``, ``("features/1/conv/kernel", 2, 5)``.
    removable: whether compaction removes it.
    pinned: tied to something of fixed size (the model's input or output, a
      slice, a reduction over channels, ...).
    nonzero: some consumer sees a nonzero contribution from it.
  """
  members: tuple[tuple[str, int, int], ...]
  removable: bool
  pinned: bool
  nonzero: bool


@dataclasses.dataclass(frozen=True)
class Analysis:
  """What :func:`analyze` found.

  Attributes:
    paths: state-leaf paths in trace order.
    shapes: their shapes before compaction.
    keep: per path, one sorted int index array per axis: the entries kept.
    groups: the channel groups (groups met by an activation that contain at
      least one state-leaf entry), in order of their first member.
    traced: the trace the analysis ran on.
    removes_padding: some removed group holds channels that a constant fills
      (zero padding or a broadcast constant concatenated to a stream), whose
      count the model must derive from the widths it is built with.
  """
  paths: tuple[str, ...]
  shapes: dict[str, tuple[int, ...]]
  keep: dict[str, tuple[np.ndarray, ...]]
  groups: tuple[ChannelGroup, ...]
  traced: Traced
  removes_padding: bool = False

  @property
  def new_shapes(self) -> dict[str, tuple[int, ...]]:
    return {p: tuple(len(k) for k in self.keep[p]) for p in self.paths}

  @property
  def changed(self) -> bool:
    return any(self.new_shapes[p] != self.shapes[p] for p in self.paths)

  def removable_groups(self) -> list[ChannelGroup]:
    return [g for g in self.groups if g.removable]


def _round_up_kept(g, leaf_nodes, removable, forced_keep: set[int], multiple_of: int) -> None:
  """Adds removable groups to ``forced_keep`` until every axis keeps a multiple.

  Keeping more groups only adds, so the sweeps converge (at worst to keeping
  everything). Narrow axes go first, and an axis tops itself up with its *own*
  groups (those in no narrower axis) before others: a residual stream that
  contains the zero-padded stream before it (an option-A shortcut) then
  rounds with its new channels instead of growing the narrower stream.
  """
  axes = []
  for nodes in leaf_nodes:
    for ids in nodes:
      if ids.size == 0:
        continue
      roots = g.find(ids)[g.flag(ids, _SEEN)]
      if roots.size:
        _, first = np.unique(roots, return_index=True)
        axes.append(roots[np.sort(first)])  # the axis's groups, in order along it
  axes.sort(key=len)
  narrowest: dict[int, int] = {}
  for uniq in axes:
    for r in uniq:
      narrowest.setdefault(int(r), len(uniq))
  changed = True
  while changed:
    changed = False
    for uniq in axes:
      rem = removable(uniq) & ~np.isin(uniq, list(forced_keep))
      short = -int((~rem).sum()) % multiple_of
      if short and rem.any():
        cand = sorted(uniq[rem], key=lambda r: narrowest[int(r)] != len(uniq))  # stable
        forced_keep.update(int(r) for r in cand[:short])
        changed = True


def analyze(model, sample_input, *, resizable_padding: bool = True,
            multiple_of: int = 1) -> Analysis:
  """Finds the channel groups of ``model`` and which of them can be removed.

  Args:
    model: a Flax NNX module, analysed in eval mode (a copy is switched; the
      model itself is not changed).
    sample_input: an array with a leading batch axis (or a tuple of arrays, the
      model's positional arguments); only its shape and dtype are used.

    resizable_padding: whether channels that the model fills with a constant
      -- the zero channels an option-A shortcut appends, or a constant block
      concatenated to a stream -- may be removed together with the channels
      they are added to. That assumes the model computes the fill width from
      its other widths (as ``option_a_shortcut`` does); with ``False`` such
      channels are pinned (for models that hard-code it).
    multiple_of: keep enough removable (all-zero) channel groups that every
      parameter axis that shrinks keeps a multiple of this many groups (or its
      full size). The extra groups contribute exactly zero, so outputs do not
      change; XLA's CPU convolutions run several times faster per
      multiply-add at widths that are multiples of 8 than at odd ones
      (``BENCHMARKS.md``). Which removable groups are kept is arbitrary (the
      first ones along the axis).

  Returns:
    An :class:`Analysis`.

  Raises:
    UnsupportedOperationError: the model applies an operation to an
      input-dependent value that the analysis cannot follow channels through.
  """
  if isinstance(multiple_of, bool) or not isinstance(multiple_of, (int, np.integer)) \
      or multiple_of < 1:
    raise ValueError(f"multiple_of must be a positive int, got {multiple_of!r}")
  traced = trace(model, sample_input)
  interp = _Interpreter(resizable_padding=resizable_padding)
  g = interp.groups
  leaf_nodes: list[list[np.ndarray]] = []
  args = []
  for leaf in traced.leaves:
    shape = tuple(np.shape(leaf))
    nodes = [g.new(s) for s in shape]
    leaf_nodes.append(nodes)
    if _is_numeric(getattr(leaf, "dtype", None)):
      args.append(_V(shape, leaf.dtype, list(nodes), _np(leaf)))
    else:
      args.append(_V(shape, leaf.dtype, list(nodes), leaf))
  for x in traced.jaxpr.jaxpr.invars[len(traced.leaves):]:
    shape = tuple(x.aval.shape)
    args.append(interp.make_act(shape, x.aval.dtype, [None] * len(shape),
                                np.zeros((1,) * len(shape), x.aval.dtype),
                                np.ones((1,) * len(shape), bool)))
  outs = interp.run(traced.jaxpr.jaxpr, traced.jaxpr.consts, args)
  for o in outs:
    interp.pin_all(o)

  # Decide: removable = seen by an activation, not pinned, never nonzero.
  def removable(ids):
    return g.flag(ids, _SEEN) & ~g.flag(ids, _PINNED) & ~g.flag(ids, _BAD)

  forced_keep: set[int] = set()
  while True:
    changed = False
    for nodes in leaf_nodes:
      for ids in nodes:
        if ids.size == 0:
          continue
        roots = g.find(ids)
        rem = removable(ids) & ~np.isin(roots, list(forced_keep))
        if rem.all():
          forced_keep.add(int(roots[0]))  # never remove a layer's last channel
          changed = True
    if not changed:
      break
  if multiple_of > 1:
    _round_up_kept(g, leaf_nodes, removable, forced_keep, multiple_of)
  keep: dict[str, tuple[np.ndarray, ...]] = {}
  shapes: dict[str, tuple[int, ...]] = {}
  for path, nodes, leaf in zip(traced.paths, leaf_nodes, traced.leaves):
    shapes[path] = tuple(np.shape(leaf))
    per_axis = []
    for ids in nodes:
      if ids.size == 0:
        per_axis.append(np.zeros(0, np.int64))
        continue
      roots = g.find(ids)
      rem = removable(ids) & ~np.isin(roots, list(forced_keep))
      per_axis.append(np.flatnonzero(~rem))
    keep[path] = tuple(per_axis)
  # Channel groups, for reporting.
  members: dict[int, list[tuple[str, int, int]]] = {}
  for path, nodes in zip(traced.paths, leaf_nodes):
    for axis, ids in enumerate(nodes):
      if ids.size == 0:
        continue
      roots = g.find(ids)
      seen = g.flag(ids, _SEEN)
      for i in np.flatnonzero(seen):
        members.setdefault(int(roots[i]), []).append((path, axis, int(i)))
  groups = []
  for root, mem in members.items():
    rm = bool(removable([root])[0]) and root not in forced_keep
    groups.append(ChannelGroup(tuple(mem), rm, bool(g.flags[root, _PINNED]),
                               bool(g.flags[root, _BAD])))
  fresh = np.concatenate(interp.fresh_ids) if interp.fresh_ids else np.zeros(0, np.int64)
  removed_roots = {int(r) for r, rm in zip(g.find(fresh), removable(fresh)) if rm} - forced_keep
  return Analysis(traced.paths, shapes, keep, tuple(groups), traced,
                  removes_padding=bool(removed_roots))
