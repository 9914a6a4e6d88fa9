"""Compaction: zeroed channels become a smaller dense model; parameters and FLOPs counted.

Structured sparsity (network slimming, group lasso) zeroes whole channels, but
zeros save nothing until the channels are removed. :func:`compact` reads which
parameter axes belong together from the model's own computation -- its jaxpr,
traced from the NNX module and a sample input -- removes every channel group
whose contribution is exactly zero, and returns a smaller NNX model with the
same outputs. :func:`count` gives parameters and per-example multiply-adds from
the same trace; :func:`save`/:func:`load` store a compacted model with orbax
and rebuild it from the files and the model's name.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from sparsejax import compact, models
  >>> model = models.get_model("lenet300_100", widths=(30, 20), rngs=nnx.Rngs(0))
  >>> x = jnp.zeros((1, 784))
  >>> model.fc1.kernel[...] = model.fc1.kernel[...].at[:, :10].set(0.0)
  >>> model.fc1.bias[...] = model.fc1.bias[...].at[:10].set(0.0)
  >>> small, plan = compact.compact(model, x, return_plan=True)
  >>> small.config["widths"]
  [20, 20]
  >>> plan.layer_widths()["fc1"]
  (30, 20)
  >>> compact.count(model, x).params, compact.count(small, x).params
  (24380, 16330)
  >>> compact.count(small, x).flops  # multiply-adds per example
  16280

See ``docs/compaction.md`` for the rules and their limits.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsejax import tree as tree_lib
from sparsejax.compact._analysis import (Analysis, ChannelGroup, UnsupportedOperationError,
                                         analyze)
from sparsejax.compact._count import Count, LayerCount, count
from sparsejax.compact._io import load, read_metadata, save
from sparsejax.compact import _rebuild

__all__ = [
    "compact",
    "analyze",
    "count",
    "save",
    "load",
    "read_metadata",
    "zero_groups",
    "report",
    "CompactionPlan",
    "Analysis",
    "ChannelGroup",
    "Count",
    "LayerCount",
    "UnsupportedOperationError",
    "CompactionCheckError",
]


class CompactionCheckError(RuntimeError):
  """The compacted model's outputs differ from the original's (a bug: please report)."""


@dataclasses.dataclass(frozen=True)
class CompactionPlan:
  """What :func:`compact` did.

  Attributes:
    analysis: the channel analysis (groups, kept indices per state leaf).
    method: ``"config"`` (rebuilt by the constructor from ``config``),
      ``"state"`` (a clone holding smaller arrays) or ``"unchanged"``.
    config: the compacted model's constructor config (``method == "config"``).
    max_abs_diff: largest output difference seen by the check (``None`` if
      the check was skipped).
  """
  analysis: Analysis
  method: str
  config: dict | None
  max_abs_diff: float | None

  @property
  def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{path: (old shape, new shape)}`` for every state leaf that shrank."""
    new = self.analysis.new_shapes
    return {p: (self.analysis.shapes[p], new[p]) for p in self.analysis.paths
            if new[p] != self.analysis.shapes[p]}

  def layer_widths(self) -> dict[str, tuple[int, int]]:
    """``{module: (old, new)}`` output width of every conv/dense kernel."""
    out = {}
    new = self.analysis.new_shapes
    for path, leaf in zip(self.analysis.paths, self.analysis.traced.leaves):
      if tree_lib.kernels(path, leaf):
        module = path.rsplit("/", 1)[0] if "/" in path else path
        out[module] = (int(self.analysis.shapes[path][-1]), int(new[path][-1]))
    return out

  @property
  def removed_groups(self) -> int:
    return len(self.analysis.removable_groups())

  def format(self) -> str:
    """A plain-text table of the layer widths before and after."""
    widths = self.layer_widths()
    w = max([len(k) for k in widths] + [5])
    rows = [f"{'layer':<{w}}  {'before':>7}  {'after':>7}"]
    rows += [f"{k:<{w}}  {a:>7}  {b:>7}" for k, (a, b) in widths.items()]
    rows.append(f"{self.removed_groups} channel group(s) removed; rebuilt by {self.method}")
    return "\n".join(rows)


def _inputs(sample_input) -> tuple:
  return tuple(sample_input) if isinstance(sample_input, (tuple, list)) else (sample_input,)


def _check_outputs(model, new, sample_input, rtol: float, atol: float) -> float:
  ref = nnx.clone(model)
  ref.eval()
  xs = _inputs(sample_input)
  trials = []
  if all(hasattr(x, "shape") and not isinstance(x, jax.ShapeDtypeStruct) for x in xs):
    trials.append(tuple(jnp.asarray(x) for x in xs))
  rng = np.random.default_rng(0)
  rand = []
  for x in xs:
    dt = np.dtype(x.dtype)
    if np.issubdtype(dt, np.floating):
      rand.append(jnp.asarray(rng.normal(size=x.shape), dt))
    elif (np.issubdtype(dt, np.integer) and hasattr(x, "shape")
          and not isinstance(x, jax.ShapeDtypeStruct) and np.size(x)):
      # Integers (uint8 images, token ids): redrawn within the sample's own range,
      # so that ids stay valid; a constant sample stays as it is.
      lo, hi = int(np.min(x)), int(np.max(x))
      rand.append(jnp.asarray(rng.integers(lo, hi + 1, size=x.shape), dt))
    elif hasattr(x, "shape") and not isinstance(x, jax.ShapeDtypeStruct):
      rand.append(jnp.asarray(x))
    else:
      rand = None
      break
  if rand is not None:
    trials.append(tuple(rand))
  worst = 0.0
  for args in trials:
    a = jax.tree.leaves(ref(*args))
    try:
      b = jax.tree.leaves(new(*args))
    except Exception as e:  # pylint: disable=broad-except
      raise CompactionCheckError(
          f"the compacted model fails to run ({type(e).__name__}: {str(e).splitlines()[0]}); "
          f"the model's code probably uses a width that compaction cannot see") from e
    if len(a) != len(b):
      raise CompactionCheckError("the compacted model returns a different output structure")
    for u, v in zip(a, b):
      u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
      if u.shape != v.shape:
        raise CompactionCheckError(
            f"the compacted model's output has shape {v.shape}, the original's {u.shape}")
      diff = float(np.max(np.abs(u - v))) if u.size else 0.0
      scale = float(np.max(np.abs(u))) if u.size else 0.0
      worst = max(worst, diff)
      if not diff <= atol + rtol * scale:
        raise CompactionCheckError(
            f"the compacted model's outputs differ from the original's by up to {diff:.3g} "
            f"(output scale {scale:.3g}); the model's code probably reads a width that "
            f"compaction cannot see. Pass check=False to get the model anyway.")
  return worst


def compact(model, sample_input, *, check: bool = True, rtol: float = 1e-4,
            atol: float = 1e-5, multiple_of: int = 1, return_plan: bool = False):
  """Removes the channels that contribute nothing; returns a smaller model.

  A channel group (a conv/dense output channel together with its bias, BN
  entries, the matching input slice of every consumer, across residual
  additions, concatenations and flattens) is removed when it is not tied to
  the model's input or output and every consumer sees an exactly zero
  contribution from it: the channel is the constant zero in eval mode (e.g.
  kernel slice zero and BN scale and shift zero, or ``relu`` of a
  non-positive constant), or the consumer's weights for it are zero. Channels
  that are a *nonzero* constant are kept (see ``docs/compaction.md``). A layer
  keeps at least one channel.

  Args:
    model: a Flax NNX module (not changed). Models with a ``.config`` are
      rebuilt with ``type(model)(**config, rngs=...)`` and narrower widths; other
      modules are cloned with smaller arrays.
    sample_input: an example input with a leading batch axis (or a tuple of
      the model's positional arguments). Its shape fixes the trace; its values
      and a random input of the same shape are used by the check.
    check: compare the outputs of the original (in eval mode) and the
      compacted model on the sample input and on a random input, and raise
      :class:`CompactionCheckError` if they differ.
    rtol: relative tolerance of the check (to the largest output magnitude).
    atol: absolute tolerance of the check.
    multiple_of: round every shrunk width up to a multiple of this (keeping
      some all-zero channels, which changes no output): ``8`` suits XLA's
      CPU convolutions (see :func:`analyze`). ``1``: remove everything
      removable.
    return_plan: also return a :class:`CompactionPlan`.

  Returns:
    The compacted model in eval mode, or ``(model, plan)``.

  Raises:
    TypeError: ``model`` is not an NNX module or ``sample_input`` is not an array.
    UnsupportedOperationError: the model uses an operation the analysis cannot
      follow channels through (named, with its source line).
    CompactionCheckError: the check failed.
  """
  for name, value in (("rtol", rtol), ("atol", atol)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise ValueError(f"{name} must be a non-negative float, got {value!r}")
  analysis = analyze(model, sample_input, multiple_of=multiple_of)
  try:
    new, method, cfg, diff = _build_and_check(model, sample_input, analysis, check, rtol, atol)
  except CompactionCheckError:
    if not analysis.removes_padding:
      raise
    # The model may hard-code how many constant channels it appends: keep them.
    analysis = analyze(model, sample_input, resizable_padding=False, multiple_of=multiple_of)
    new, method, cfg, diff = _build_and_check(model, sample_input, analysis, check, rtol, atol)
  if return_plan:
    return new, CompactionPlan(analysis, method, cfg, diff)
  return new


def _build_and_check(model, sample_input, analysis, check, rtol, atol):
  if not analysis.changed:
    new = nnx.clone(model)
    method, cfg = "unchanged", getattr(model, "config", None)
  else:
    values = {}
    for path, leaf in zip(analysis.paths, analysis.traced.leaves):
      keep = analysis.keep[path]
      if all(len(k) == s for k, s in zip(keep, np.shape(leaf))):
        values[path] = leaf
      else:
        values[path] = jnp.asarray(np.asarray(leaf)[np.ix_(*keep)])
    new, method, cfg = _rebuild.rebuild(model, values)
  new.eval()
  diff = _check_outputs(model, new, sample_input, rtol, atol) if check else None
  return new, method, cfg, diff


def zero_groups(model, groups, *, include_batch_stats: bool = False) -> None:
  """Sets every parameter entry of the given channel groups to zero, in place.

  A group zeroed this way is removable by :func:`compact` (its consumers'
  weights for it are zero). Useful to emulate structured pruning in tests and
  benchmarks.

  Args:
    model: the NNX module the groups came from (via :func:`analyze`).
    groups: an iterable of :class:`ChannelGroup`.
    include_batch_stats: also zero batch-norm running statistics (otherwise
      only ``nnx.Param`` entries are zeroed).
  """
  state = nnx.state(model)
  flat, treedef = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  kinds = {tree_lib.path_str(p): v for p, v in flat}
  arrays = {p: np.array(v.get_value()) for p, v in kinds.items()}
  for g in groups:
    if not isinstance(g, ChannelGroup):
      raise TypeError(f"groups must hold ChannelGroup objects, got {type(g).__name__}")
    for path, axis, index in g.members:
      if path not in arrays:
        raise ValueError(f"group member {path!r} is not a state leaf of this model")
      if not include_batch_stats and not isinstance(kinds[path], nnx.Param):
        continue
      idx = [slice(None)] * arrays[path].ndim
      idx[axis] = index
      arrays[path][tuple(idx)] = 0
  _rebuild.set_state(model, arrays)


def report(model, sample_input, *, save_dir: str | None = None,
           name: str | None = None, multiple_of: int = 1) -> tuple[Any, dict[str, Any]]:
  """Compacts ``model`` and returns ``(compacted, entry)`` for ``report.json``.

  ``entry`` holds parameters and per-example multiply-adds before and after,
  their ratios, the per-layer widths, and where the compacted model was saved
  (``save_dir``, if given; loadable with :func:`load`; the original config is
  kept in its ``model.json`` under ``extra.original_config``).

  Args:
    model: the trained model (any mode; analysed in eval mode).
    sample_input: one example batch (shape and dtype matter; see :func:`compact`).
    save_dir: where to save the compacted model (replacing what is there).
    name: the model's name in :data:`sparsejax.models.MODELS`, for :func:`load`.
    multiple_of: passed to :func:`compact` (round shrunk widths up to multiples).

  Returns:
    ``(compacted model, entry)``; ``entry`` is JSON-serialisable.
  """
  before = count(model, sample_input)
  small, plan = compact(model, sample_input, multiple_of=multiple_of, return_plan=True)
  after = count(small, sample_input)
  entry: dict[str, Any] = {
      "params_before": before.params,
      "params_after": after.params,
      "flops_before": before.flops,
      "flops_after": after.flops,
      "params_ratio": before.params / max(after.params, 1),
      "flops_ratio": before.flops / max(after.flops, 1),
      "flops_convention": "multiply-adds per example (conv and dense layers)",
      "removed_channel_groups": plan.removed_groups,
      "multiple_of": multiple_of,
      "layer_widths": {k: list(v) for k, v in plan.layer_widths().items()},
      "rebuilt_by": plan.method,
      "max_abs_output_diff": plan.max_abs_diff,
  }
  if save_dir is not None:
    extra = {k: entry[k] for k in ("params_before", "params_after", "flops_before",
                                   "flops_after")}
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict):
      try:
        json.dumps(cfg)
        extra["original_config"] = cfg
      except (TypeError, ValueError):
        pass
    entry["saved_to"] = save(save_dir, small, name=name, sample_input=sample_input,
                             extra=extra, overwrite=True)
  return small, entry
