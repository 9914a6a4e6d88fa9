"""Parameters and multiply-adds of a model, read from its jaxpr."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
from jax.extend import core as jcore

from sparsejax.compact import _analysis

__all__ = ["LayerCount", "Count", "count"]

# Operations that keep "this value is (a view of) state leaf P".
_VIEW_OPS = frozenset(("reshape", "convert_element_type", "transpose", "squeeze",
                       "broadcast_in_dim", "copy", "copy_p", "reduce_precision", "mul",
                       "sharding_constraint"))


@dataclasses.dataclass(frozen=True)
class LayerCount:
  """Parameters and multiply-adds of one module (a path prefix like ``features/0/conv``)."""
  name: str
  params: int
  flops: int


@dataclasses.dataclass(frozen=True)
class Count:
  """What :func:`count` returns.

  Attributes:
    params: number of scalar parameters (``nnx.Param`` entries; batch-norm
      running statistics are not parameters).
    flops: multiply-adds of the conv and dense layers for **one example**: the
      forward pass on ``sample_input`` divided by its batch size. One
      multiply-add counts once (the convention of the pruning literature;
      double it for "FLOPs" counted as separate multiplies and adds). Biases,
      batch norm, activations and pooling are not counted.
    layers: per module, in order of first appearance.
  """
  params: int
  flops: int
  layers: tuple[LayerCount, ...]

  def as_dict(self) -> dict[str, Any]:
    return {"params": self.params, "flops": self.flops,
            "layers": [dataclasses.asdict(l) for l in self.layers]}

  def format(self) -> str:
    """A plain-text table, one row per module."""
    w = max([len(l.name) for l in self.layers] + [5])
    rows = [f"{'layer':<{w}}  {'params':>12}  {'multiply-adds':>15}"]
    for l in self.layers:
      rows.append(f"{l.name:<{w}}  {l.params:>12,}  {l.flops:>15,}")
    rows.append(f"{'total':<{w}}  {self.params:>12,}  {self.flops:>15,}")
    return "\n".join(rows)


def _module_of(path: str) -> str:
  return path.rsplit("/", 1)[0] if "/" in path else path



def _conv_macs(eqn) -> int:
  """Multiply-adds of a ``conv_general_dilated``: every output entry times its
  kernel taps times the input features per group (taps on the zero padding
  included, the usual convention). Along an axis with input (lhs) dilation --
  a transposed convolution -- only the taps that land on real input elements
  count, neither the inserted zeros nor the padding: input positions times
  kernel taps, the usual convention for transposed convolutions."""
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  lshape, k, oshape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
  per_tap = int(np.prod([k[a] for a in rhs_spec[:2]]))  # out features x in features per group
  n = int(oshape[out_spec[0]]) * per_tap
  dil = p.get("lhs_dilation") or (1,) * (len(k) - 2)
  rdil = p.get("rhs_dilation") or (1,) * (len(k) - 2)
  for i, (la, ka, oa) in enumerate(zip(lhs_spec[2:], rhs_spec[2:], out_spec[2:])):
    size, d, o, kk = int(lshape[la]), int(dil[i]), int(oshape[oa]), int(k[ka])
    if d == 1:
      n *= o * kk
      continue
    pos = (np.arange(o)[:, None] * int(p["window_strides"][i]) - int(p["padding"][i][0])
           + np.arange(kk)[None, :] * int(rdil[i]))
    real = (pos >= 0) & (pos < (size - 1) * d + 1) & (pos % d == 0)
    n *= int(real.sum())
  return n

def count(model, sample_input) -> Count:
  """Counts parameters and per-example multiply-adds of ``model``.

  The model is traced in eval mode on ``sample_input``'s shape (a copy is
  switched; the model is not changed). Every ``conv_general_dilated`` counts
  ``out_h * out_w * k_h * k_w * C_in / groups * C_out`` multiply-adds per
  example, every ``dot_general`` the product of its output size and its
  contracted size (``in * out`` for a dense layer), wherever they sit in the
  computation (inside ``jit`` or ``custom_jvp`` calls too). Each is charged to
  the module owning its kernel.

  Args:
    model: a Flax NNX module.
    sample_input: an array with a leading batch axis (or a tuple of arrays);
      only shapes and dtypes are used.

  Returns:
    A :class:`Count`.

  Raises:
    ValueError: a convolution or matrix product sits in a ``while`` loop
      (also in a branch inside its body), whose trip count is unknown, or in
      another primitive with a body that the count does not follow.
  """
  traced = _analysis.trace(model, sample_input)
  flops: dict[str, int] = {}
  order: list[str] = []

  def note(name: str):
    if name not in order:
      order.append(name)

  def charge(name: str, n: int):
    note(name)
    flops[name] = flops.get(name, 0) + n

  b = max(traced.batch_size, 1)

  def walk(jaxpr, sources: dict, times: int, deps: set):
    """``deps``: the variables that depend on the model's input. A product of
    input-independent values (e.g. ``U @ V`` of two parameters) runs once per
    forward pass: counted in full, as at batch size 1, not shared by the batch."""
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      ins = [None if isinstance(v, jcore.Literal) else sources.get(v) for v in eqn.invars]
      dep = any(_in_deps(v, deps) for v in eqn.invars)
      if dep:
        deps.update(eqn.outvars)
      times_b = times if dep else times * b
      for s in ins:
        if s:
          note(_module_of(s))
      if name == "conv_general_dilated":
        n = _conv_macs(eqn)
        charge(_module_of(ins[1]) if ins[1] else f"conv@{_analysis._where(eqn)}", n * times_b)
      elif name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lshape = eqn.invars[0].aval.shape
        n = int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lshape[a] for a in lc]))
        src = ins[1] or ins[0]
        charge(_module_of(src) if src else f"dot@{_analysis._where(eqn)}", n * times_b)
      elif name in _VIEW_OPS:
        # A view of a parameter (a reshaped, cast or masked kernel), not an activation
        # scaled by one (``x * gate``): an input-dependent operand that is no view of a
        # parameter itself makes the result an activation.
        src = next((s for s in ins if s), None)
        if src and all(s or not _in_deps(v, deps) for v, s in zip(eqn.invars, ins)):
          for v in eqn.outvars:
            sources[v] = src
      sub = _analysis._sub_jaxpr(eqn)
      if name in _analysis._CALLS and sub is not None:
        inner, _ = sub
        walk(inner, {iv: s for iv, s in zip(inner.invars, ins) if s}, times,
             {iv for iv, ov in zip(inner.invars, eqn.invars) if _in_deps(ov, deps)})
      elif name == "scan":
        inner = eqn.params["jaxpr"].jaxpr  # invars: consts, carry, xs -- as the eqn's
        # Consts and xs depend on the input as their operands do (a kernel passed in as a
        # const is no activation, so ``kernel * mask`` in the body stays a view of it); a
        # carry may pick the input up in any iteration, so all carries do when any operand does.
        k0 = int(eqn.params["num_consts"])
        k1 = k0 + int(eqn.params["num_carry"])
        inner_deps = {iv for i, (iv, ov) in enumerate(zip(inner.invars, eqn.invars))
                      if dep and (k0 <= i < k1 or _in_deps(ov, deps))}
        walk(inner, {iv: s for iv, s in zip(inner.invars, ins) if s},
             times * int(eqn.params["length"]), inner_deps)
      elif name == "cond":
        before = dict(flops)
        best: dict[str, int] = {}
        for br in eqn.params["branches"]:
          flops.clear()
          flops.update(before)
          walk(br.jaxpr, {iv: s for iv, s in zip(br.jaxpr.invars, ins[1:]) if s}, times,
               {iv for iv, ov in zip(br.jaxpr.invars, eqn.invars[1:]) if _in_deps(ov, deps)})
          if sum(flops.values()) > sum(best.values() or [0]):
            best = dict(flops)
        flops.clear()
        flops.update(best or before)
      elif name == "while":
        for key in ("cond_jaxpr", "body_jaxpr"):
          probe: dict[str, int] = {}
          _count_only(eqn.params[key].jaxpr, probe)
          if probe:
            raise ValueError(
                f"count cannot size the while loop at {_analysis._where(eqn)}: it contains "
                f"convolutions or matrix products and its trip count is unknown")
      elif name == "pallas_call":
        # A Pallas kernel's body runs once per grid point on blocks, often with loops over
        # stored blocks inside: its multiply-adds cannot be read off the body. Parameters
        # are still counted; say loudly what is missing rather than refuse the whole count.
        probe = {}
        for inner in _sub_jaxprs(eqn):
          _count_only(inner, probe)
        if probe:
          warnings.warn(
              f"count does not see inside the Pallas kernel at {_analysis._where(eqn)}: its "
              f"multiply-adds are not counted (a SparseLinear built with impl='xla' or "
              f"'reference' is counted in full)", stacklevel=2)
      else:
        probe = {}
        for inner in _sub_jaxprs(eqn):
          _count_only(inner, probe)
        if probe:
          raise ValueError(
              f"count cannot follow primitive '{name}' at {_analysis._where(eqn)}: it "
              f"contains convolutions or matrix products")

  invars = traced.jaxpr.jaxpr.invars
  sources = {v: p for v, p in zip(invars, traced.paths)}
  walk(traced.jaxpr.jaxpr, sources, 1, set(invars[len(invars) - traced.num_inputs:]))
  params: dict[str, int] = {}
  for path, leaf, is_param in zip(traced.paths, traced.leaves, traced.is_param):
    if is_param:
      m = _module_of(path)
      params[m] = params.get(m, 0) + int(np.size(leaf))
      if m not in order:
        order.append(m)
  layers = tuple(LayerCount(m, params.get(m, 0), flops.get(m, 0) // b) for m in order)
  return Count(sum(params.values()), sum(flops.values()) // b, layers)


def _in_deps(v, deps: set) -> bool:
  return not isinstance(v, jcore.Literal) and v in deps


def _sub_jaxprs(eqn) -> list:
  """Every jaxpr among ``eqn``'s parameters: call bodies, ``cond`` branches, ``while``
  condition and body, ..."""
  out = []

  def add(v):
    if isinstance(v, jcore.ClosedJaxpr):
      out.append(v.jaxpr)
    elif isinstance(v, jcore.Jaxpr):
      out.append(v)
    elif isinstance(v, (tuple, list)):
      for x in v:
        add(x)

  for v in eqn.params.values():
    add(v)
  return out


def _count_only(jaxpr, out: dict) -> None:
  """Counts conv/dot equations in ``jaxpr`` and its sub-jaxprs into ``out["n"]``."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      out["n"] = out.get("n", 0) + 1
    for inner in _sub_jaxprs(eqn):
      _count_only(inner, out)
