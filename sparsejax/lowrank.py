r"""Low-rank factored layers and the export of a TRP-trained model.

A conv kernel whose matrix (see :mod:`sparsejax.optim.trp`) has rank
:math:`r` is computed exactly by two thinner convs in sequence:

* **channel-wise** -- the matrix ``(N, C·kh·kw)`` is
  :math:`U\Sigma V^\top`: a ``kh×kw`` conv ``C → r`` with kernel
  :math:`V\sqrt\Sigma` (the original stride, padding and dilation) followed by
  a ``1×1`` conv ``r → N`` with kernel :math:`U\sqrt\Sigma` (the square root of
  :math:`\Sigma` split between the two, as the authors do) and the original
  bias;
* **spatial-wise** -- the matrix ``(C·kh, N·kw)`` is :math:`U\Sigma V^\top`:
  a ``kh×1`` conv ``C → r`` with kernel :math:`U` followed by a ``1×kw`` conv
  ``r → N`` with kernel :math:`V\Sigma` (:math:`\Sigma` in the second, as the
  authors do). The height stride, padding and dilation go on the first factor
  and the width ones on the second: a ``kh×1`` conv cannot subsample the
  width without dropping columns the ``1×kw`` conv still needs, so this split
  is the one that is exact for strided convs.

Multiply-adds per output pixel drop from :math:`kh\,kw\,C\,N` to
:math:`r(kh\,kw\,C + N)` (channel-wise) or :math:`r(s_w\,kh\,C + kw\,N)`
(spatial-wise, :math:`s_w` the width stride: the first factor runs at the full
input width).

**Strided convs.** The authors decompose only stride-1 convs at the end (the
stride-2 ones are truncated during training but stay dense). sparsejax
decomposes them too, exactly -- channel-wise with the stride on the first
factor, spatial-wise with the stride split as above -- which removes more
multiply-adds than the paper's export (``strided=False`` restores the
authors' choice).

:class:`LowRankConv` and :class:`LowRankLinear` are the factored layers
(two ``nnx.Conv`` / ``nnx.Linear`` submodules ``first`` and ``second``);
:func:`decompose` returns a copy of a model with the selected convs replaced,
and :func:`export` adds parameter and FLOP counts and an output check.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from sparsejax import lowrank
  >>> conv = nnx.Conv(8, 16, (3, 3), use_bias=False, rngs=nnx.Rngs(0))
  >>> low = lowrank.LowRankConv.from_conv(conv, scheme="channel", rank=2)
  >>> low.first.kernel.shape, low.second.kernel.shape
  ((3, 3, 8, 2), (1, 1, 2, 16))
  >>> dense_rank2 = lowrank.reconstruct(low)  # the rank-2 kernel the pair computes
  >>> x = jnp.ones((1, 5, 5, 8))
  >>> ref = nnx.Conv(8, 16, (3, 3), use_bias=False, rngs=nnx.Rngs(0))
  >>> ref.kernel[...] = dense_rank2
  >>> bool(jnp.allclose(low(x), ref(x), atol=1e-5))
  True
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsejax import tree as tree_lib
from sparsejax.optim import trp as trp_lib

__all__ = [
    "LowRankConv",
    "LowRankLinear",
    "conv_factors",
    "reconstruct",
    "choose_rank",
    "decompose",
    "factored_layers",
    "export",
]

_STR_PADDINGS = ("SAME", "VALID", "CIRCULAR", "REFLECT")


# ---------------------------------------------------------------------------
# Ranks and factors (numpy, float64).
# ---------------------------------------------------------------------------


def choose_rank(s: np.ndarray, *, rank: int | None = None, cut: float | None = None,
                energy: float | None = None) -> int:
  """The rank to keep for singular values ``s`` (descending).

  Exactly one of: ``rank`` (an int in ``[0, len(s)]``), ``cut`` (the number of
  values ``>= cut``: the paper's 0.05) or ``energy`` (the smallest rank keeping
  that fraction of :math:`\\sum\\sigma_i^2`, as during training).
  """
  given = [k for k, v in (("rank", rank), ("cut", cut), ("energy", energy)) if v is not None]
  if len(given) != 1:
    raise ValueError(f"give exactly one of rank, cut and energy, got {given or 'none'}")
  s = np.asarray(s, np.float64)
  k = s.shape[-1]
  if rank is not None:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank <= k:
      raise ValueError(f"rank must be an int in [0, {k}], got {rank!r}")
    return int(rank)
  if cut is not None:
    if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not cut >= 0:
      raise ValueError(f"cut must be a float >= 0, got {cut!r}")
    return int(np.sum(s >= cut))
  if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
    raise ValueError(f"energy must be a float in (0, 1], got {energy!r}")
  csum = np.cumsum(s * s)
  if csum[-1] <= 0:
    return 0
  return int(min(np.sum(csum < energy * csum[-1]) + 1, k))


def _svd(kernel, scheme: str):
  """Float64 SVD of ``scheme``'s matrix of ``kernel`` (the layout of :func:`trp.to_matrix`)."""
  k = np.asarray(jax.device_get(kernel), np.float64)
  perm, mshape = trp_lib._perm(k.shape, scheme)  # pylint: disable=protected-access
  return np.linalg.svd(np.transpose(k, perm).reshape(mshape), full_matrices=False)


def conv_factors(kernel, rank: int, scheme: str = "channel") -> tuple[np.ndarray, np.ndarray]:
  """The two kernels of the rank-``rank`` factorization of a conv kernel.

  Args:
    kernel: HWIO kernel ``(kh, kw, C, N)`` (for ``"channel"`` any
      channels-last conv kernel ``(*window, C, N)``).
    rank: the number of singular values kept, ``>= 1``.
    scheme: ``"channel"``: returns ``(kh, kw, C, r)`` and ``(1, 1, r, N)``
      (:math:`\\sqrt\\sigma` in each); ``"spatial"``: ``(kh, 1, C, r)`` and
      ``(1, kw, r, N)`` (:math:`\\sigma` in the second).

  Returns:
    ``(first, second)`` float64 numpy kernels.
  """
  trp_lib._check_scheme(scheme)  # pylint: disable=protected-access
  shape = tuple(int(d) for d in np.shape(kernel))
  u, s, vt = _svd(kernel, scheme)
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= len(s):
    raise ValueError(f"rank must be an int in [1, {len(s)}], got {rank!r}")
  u, s, v = u[:, :rank], s[:rank], vt[:rank].T
  window, c, n = shape[:-2], shape[-2], shape[-1]
  if scheme == "channel":
    root = np.sqrt(s)
    # v: (C * prod(window), r), rows ordered (c, *window) -> (*window, C, r).
    first = np.moveaxis((v * root).reshape(c, *window, rank), 0, -2)
    second = (u * root).T.reshape(*([1] * len(window)), rank, n)
    return first, second
  kh, kw = window
  # u: (C * kh, r), rows (c, h) -> (kh, 1, C, r); v: (N * kw, r), rows (n, w) -> (1, kw, r, N).
  first = u.reshape(c, kh, rank).transpose(1, 0, 2)[:, None]
  second = (v * s).reshape(n, kw, rank).transpose(1, 2, 0)[None]
  return first, second


# ---------------------------------------------------------------------------
# Layers.
# ---------------------------------------------------------------------------


def _per_dim(value, nd: int, name: str) -> tuple[int, ...]:
  if value is None:
    return (1,) * nd
  if isinstance(value, int):
    return (value,) * nd
  value = tuple(int(v) for v in value)
  if len(value) != nd:
    raise ValueError(f"{name} must have {nd} entries, got {value!r}")
  return value


def _pads(padding, nd: int):
  """A padding string, or a list of ``nd`` ``(low, high)`` pairs."""
  if isinstance(padding, str):
    if padding.upper() not in _STR_PADDINGS:
      raise ValueError(f"conv padding {padding!r} is not supported; allowed: {_STR_PADDINGS} "
                       f"or explicit pairs")
    return padding.upper()
  if isinstance(padding, int):
    return [(padding, padding)] * nd
  pads = []
  for p in padding:
    if isinstance(p, int):
      pads.append((p, p))
    else:
      lo, hi = p
      pads.append((int(lo), int(hi)))
  if len(pads) != nd:
    raise ValueError(f"conv padding {padding!r} must have {nd} entries")
  return pads


def _conv(in_f: int, out_f: int, kernel: np.ndarray, like: nnx.Conv, *, strides, padding,
          dilation, bias) -> nnx.Conv:
  # Built abstractly (no initialiser runs), then given its values.
  conv = nnx.eval_shape(lambda: nnx.Conv(
      in_f, out_f, tuple(kernel.shape[:-2]), strides=strides, padding=padding,
      kernel_dilation=dilation, use_bias=bias is not None, dtype=like.dtype,
      param_dtype=like.param_dtype, precision=like.precision, rngs=nnx.Rngs(0)))
  conv.kernel.set_value(jnp.asarray(kernel, like.param_dtype))
  if bias is not None:
    conv.bias.set_value(jnp.asarray(bias, like.param_dtype))
  return conv


def _effective_kernel(conv: nnx.Conv) -> jax.Array:
  kernel = conv.kernel[...]
  if conv.mask is not None:
    kernel = kernel * conv.mask
  return kernel


def _check_conv(conv, scheme: str) -> None:
  if not isinstance(conv, nnx.Conv):
    raise TypeError(f"conv must be an nnx.Conv, got {type(conv).__name__}")
  nd = len(conv.kernel_size)
  if conv.feature_group_count != 1:
    raise ValueError(f"grouped convs (feature_group_count={conv.feature_group_count}) cannot "
                     f"be factored")
  if any(d != 1 for d in _per_dim(conv.input_dilation, nd, "input_dilation")):
    raise ValueError(f"convs with input_dilation {conv.input_dilation!r} cannot be factored")
  if scheme == "spatial" and nd != 2:
    raise ValueError(f"scheme='spatial' needs a 2-D conv, got kernel_size {conv.kernel_size}")
  if isinstance(conv.padding, str) and conv.padding.upper() == "CAUSAL":
    raise ValueError("CAUSAL padding is not supported")


class LowRankConv(nnx.Module):
  """A conv computed as two thinner convs: ``second(first(x))``.

  Build one from a trained conv with :meth:`from_conv`. Parameters live at
  ``first/kernel``, ``second/kernel`` (and ``second/bias``).

  Attributes:
    first: ``nnx.Conv`` ``C → rank`` (``kh×kw`` channel-wise, ``kh×1``
      spatial-wise).
    second: ``nnx.Conv`` ``rank → N`` (``1×1`` channel-wise, ``1×kw``
      spatial-wise), with the original bias.
    scheme: ``"channel"`` or ``"spatial"``.
    rank: the inner width.
    full_rank: the rank of a generic kernel of the original shape.
  """

  def __init__(self, first: nnx.Conv, second: nnx.Conv, *, scheme: str, rank: int,
               full_rank: int):
    trp_lib._check_scheme(scheme)  # pylint: disable=protected-access
    self.first = first
    self.second = second
    self.scheme = scheme
    self.rank = int(rank)
    self.full_rank = int(full_rank)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.second(self.first(x))

  @classmethod
  def from_conv(cls, conv: nnx.Conv, *, scheme: str = "channel", rank: int | None = None,
                cut: float | None = None, energy: float | None = None) -> LowRankConv:
    """Factors ``conv`` at the rank given by exactly one of ``rank``, ``cut``, ``energy``.

    The factored layer computes ``conv`` with its kernel replaced by the best
    rank-``r`` approximation in ``scheme``'s matrix (exactly ``conv`` when the
    kernel has rank ``<= r``). A rank of 0 (every singular value below
    ``cut``) gives one inner channel with zero weights: the conv's output is
    then its bias alone, as for the zero kernel.

    Raises:
      TypeError: ``conv`` is not an ``nnx.Conv``.
      ValueError: a grouped, input-dilated or causal conv; ``"spatial"`` on a
        conv that is not 2-D; a bad rank, cut or energy.
    """
    trp_lib._check_scheme(scheme)  # pylint: disable=protected-access
    _check_conv(conv, scheme)
    kernel = _effective_kernel(conv)
    _, s, _ = _svd(kernel, scheme)
    r = choose_rank(s, rank=rank, cut=cut, energy=energy)
    first_k, second_k = conv_factors(kernel, max(r, 1), scheme)
    if r == 0:
      second_k = np.zeros_like(second_k)
    r = max(r, 1)
    nd = len(conv.kernel_size)
    strides = _per_dim(conv.strides, nd, "strides")
    dilation = _per_dim(conv.kernel_dilation, nd, "kernel_dilation")
    pads = _pads(conv.padding, nd)
    bias = None if conv.bias is None else np.asarray(conv.bias[...])
    c, n = conv.in_features, conv.out_features
    if scheme == "channel":
      first = _conv(c, r, first_k, conv, strides=strides, padding=pads, dilation=dilation,
                    bias=None)
      second = _conv(r, n, second_k, conv, strides=1, padding="VALID", dilation=1, bias=bias)
    else:
      if isinstance(pads, str):
        p1 = p2 = pads  # each string pads a window of size 1 by nothing
      else:
        p1, p2 = [pads[0], (0, 0)], [(0, 0), pads[1]]
      first = _conv(c, r, first_k, conv, strides=(strides[0], 1), padding=p1,
                    dilation=(dilation[0], 1), bias=None)
      second = _conv(r, n, second_k, conv, strides=(1, strides[1]), padding=p2,
                     dilation=(1, dilation[1]), bias=bias)
    return cls(first, second, scheme=scheme, rank=r,
               full_rank=min(trp_lib.matrix_shape(kernel.shape, scheme)))


class LowRankLinear(nnx.Module):
  """A dense layer computed as ``second(first(x))`` through ``rank`` features.

  ``first`` is ``nnx.Linear(in, rank, use_bias=False)`` with kernel
  :math:`U\\sqrt\\Sigma`, ``second`` is ``nnx.Linear(rank, out)`` with kernel
  :math:`\\sqrt\\Sigma V^\\top` and the original bias, for the SVD
  :math:`W = U\\Sigma V^\\top` of the ``(in, out)`` kernel.
  """

  def __init__(self, first: nnx.Linear, second: nnx.Linear, *, rank: int, full_rank: int):
    self.first = first
    self.second = second
    self.scheme = "dense"
    self.rank = int(rank)
    self.full_rank = int(full_rank)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.second(self.first(x))

  @classmethod
  def from_linear(cls, linear: nnx.Linear, *, rank: int | None = None, cut: float | None = None,
                  energy: float | None = None) -> LowRankLinear:
    """Factors ``linear`` at the rank given by exactly one of ``rank``, ``cut``, ``energy``."""
    if not isinstance(linear, nnx.Linear):
      raise TypeError(f"linear must be an nnx.Linear, got {type(linear).__name__}")
    w = np.asarray(jax.device_get(linear.kernel[...]), np.float64)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    r = choose_rank(s, rank=rank, cut=cut, energy=energy)
    rr = max(r, 1)
    root = np.sqrt(s[:rr])
    k1, k2 = u[:, :rr] * root, root[:, None] * vt[:rr]
    if r == 0:
      k2 = np.zeros_like(k2)
    kw = dict(dtype=linear.dtype, param_dtype=linear.param_dtype, precision=linear.precision)
    use_bias = linear.bias is not None
    first = nnx.eval_shape(lambda: nnx.Linear(w.shape[0], rr, use_bias=False, rngs=nnx.Rngs(0),
                                              **kw))
    second = nnx.eval_shape(lambda: nnx.Linear(rr, w.shape[1], use_bias=use_bias,
                                               rngs=nnx.Rngs(0), **kw))
    first.kernel.set_value(jnp.asarray(k1, linear.param_dtype))
    second.kernel.set_value(jnp.asarray(k2, linear.param_dtype))
    if use_bias:
      second.bias.set_value(jnp.asarray(linear.bias[...], linear.param_dtype))
    return cls(first, second, rank=rr, full_rank=min(w.shape))


def reconstruct(layer: LowRankConv | LowRankLinear) -> jax.Array:
  """The dense kernel a factored layer computes (shape of the original kernel)."""
  if isinstance(layer, LowRankLinear):
    return jnp.matmul(layer.first.kernel[...], layer.second.kernel[...],
                      precision=jax.lax.Precision.HIGHEST)
  if not isinstance(layer, LowRankConv):
    raise TypeError(f"layer must be a LowRankConv or LowRankLinear, got {type(layer).__name__}")
  k1, k2 = layer.first.kernel[...], layer.second.kernel[...]
  if layer.scheme == "channel":
    # (*window, C, r) x (r, N) -> (*window, C, N).
    return jnp.einsum("...ci,in->...cn", k1, k2.reshape(k2.shape[-2:]),
                      precision=jax.lax.Precision.HIGHEST)
  # (kh, 1, C, r) x (1, kw, r, N) -> (kh, kw, C, N).
  return jnp.einsum("hci,win->hwcn", k1[:, 0], k2[0], precision=jax.lax.Precision.HIGHEST)


# ---------------------------------------------------------------------------
# Whole models.
# ---------------------------------------------------------------------------


def _parent_and_key(model: nnx.Module, path: tuple[Any, ...]):
  node = model
  for key in path[:-1]:
    node = node[key] if isinstance(key, int) else getattr(node, key)
  return node, path[-1]


def _macs_per_pixel(shape: tuple[int, ...], rank: int | None, scheme: str, strides) -> int:
  """Multiply-adds per output pixel of a conv kernel, dense (rank None) or factored."""
  window, c, n = shape[:-2], shape[-2], shape[-1]
  if rank is None:
    return math.prod(window) * c * n
  if scheme == "channel":
    return rank * (math.prod(window) * c + n)
  kh, kw = window
  return rank * (strides[1] * kh * c + kw * n)


def _check_choice(cut, energy):
  if cut is not None and energy is not None:
    raise ValueError(f"give at most one of cut and energy, got cut={cut!r}, energy={energy!r}")
  if cut is None and energy is None:
    cut = 0.05
  return cut, energy


def decompose(model: nnx.Module, *, scheme: str = "channel", cut: float | None = None,
              energy: float | None = None, filter_fn: tree_lib.FilterFn | None = None,
              include_dense: bool = False, only_if_smaller: bool = True,
              strided: bool = True) -> nnx.Module:
  """A copy of ``model`` with the selected convs (and dense layers) factored.

  Every ``nnx.Conv`` whose kernel (path ``"<module>/kernel"``) the filter
  selects is replaced on a clone by :meth:`LowRankConv.from_conv` at the rank
  chosen by ``cut`` (singular values ``>= cut`` kept; the paper's 0.05 when
  neither ``cut`` nor ``energy`` is given) or ``energy``. The original model is
  not changed.

  Args:
    model: an NNX module (e.g. from :mod:`sparsejax.models`).
    scheme: ``"channel"`` or ``"spatial"``; use the scheme the model was
      trained with.
    cut: singular-value threshold (absolute).
    energy: energy fraction in ``(0, 1]`` instead of ``cut``.
    filter_fn: ``(kernel_path, kernel) -> bool``; default
      :func:`sparsejax.optim.trp.default_filter` (``k×k`` convs except input
      convs).
    include_dense: also factor ``nnx.Linear`` layers (any ``filter_fn`` or
      dense kernel).
    only_if_smaller: keep a layer dense when the factored pair would need at
      least as many multiply-adds per output pixel (a rank close to full
      rank). The paper factors every selected layer.
    strided: also factor strided convs (the authors keep them dense; see the
      module docstring).

  Returns:
    The factored copy (same train/eval mode). Its factored layers are listed
    by :func:`factored_layers`.
  """
  trp_lib._check_scheme(scheme)  # pylint: disable=protected-access
  cut, energy = _check_choice(cut, energy)
  if filter_fn is not None and not callable(filter_fn):
    raise TypeError(f"filter_fn must be callable (path, leaf) -> bool or None, got {filter_fn!r}")
  select = trp_lib._filter(filter_fn, include_dense)  # pylint: disable=protected-access
  new = nnx.clone(model)
  factored = [p for p, node in nnx.iter_graph(new)
              if isinstance(node, (LowRankConv, LowRankLinear))]
  targets = []
  for path, node in nnx.iter_graph(new):
    if not isinstance(node, (nnx.Conv, nnx.Linear)) or not path:
      continue
    if any(tuple(path[:len(f)]) == tuple(f) for f in factored):
      continue
    name = "/".join(str(k) for k in path)
    kernel = node.kernel[...]
    if not select(f"{name}/kernel", kernel):
      continue
    targets.append((tuple(path), node))
  for path, node in targets:
    if isinstance(node, nnx.Linear):
      layer = LowRankLinear.from_linear(node, cut=cut, energy=energy)
      dense = node.in_features * node.out_features
      if only_if_smaller and layer.rank * (node.in_features + node.out_features) >= dense:
        continue
    else:
      strides = _per_dim(node.strides, len(node.kernel_size), "strides")
      if not strided and any(s != 1 for s in strides):
        continue
      layer = LowRankConv.from_conv(node, scheme=scheme, cut=cut, energy=energy)
      shape = tuple(node.kernel.shape)
      if only_if_smaller and (_macs_per_pixel(shape, layer.rank, scheme, strides)
                              >= _macs_per_pixel(shape, None, scheme, strides)):
        continue
    parent, key = _parent_and_key(new, path)
    if isinstance(key, int):
      parent[key] = layer
    else:
      setattr(parent, key, layer)
  return new


def factored_layers(model: nnx.Module) -> dict[str, LowRankConv | LowRankLinear]:
  """``{module path: layer}`` for every factored layer of ``model``."""
  return {"/".join(str(k) for k in p): node for p, node in nnx.iter_graph(model)
          if isinstance(node, (LowRankConv, LowRankLinear))}


def _low_rank_reference(model: nnx.Module, factored: nnx.Module) -> nnx.Module:
  """``model`` with each factored layer's kernel replaced by what the pair computes."""
  ref = nnx.clone(model)
  for name, layer in factored_layers(factored).items():
    path = tuple(int(k) if k.isdigit() else k for k in name.split("/"))
    parent, key = _parent_and_key(ref, path)
    node = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(node, (LowRankConv, LowRankLinear)):  # factored before this call: as is
      continue
    node.kernel[...] = reconstruct(layer).astype(node.kernel[...].dtype)
    if isinstance(node, nnx.Conv) and node.mask is not None:
      node.mask = None
  return ref


def _is_conv(module) -> bool:
  """A conv layer: a module whose own kernel is spatial (ndim >= 3, HWIO), which
  covers nnx.Conv and other conv modules such as the DARTS depthwise conv."""
  kernel = getattr(module, "kernel", None)
  return isinstance(kernel, nnx.Variable) and jnp.ndim(kernel[...]) >= 3


def _conv_flops(model, count) -> int:
  modules = {"/".join(str(k) for k in p): n for p, n in nnx.iter_graph(model)}
  return sum(l.flops for l in count.layers if _is_conv(modules.get(l.name)))


def _max_diff(a_model, b_model, xs) -> tuple[float, float]:
  """Largest ``|a - b|`` and ``|a|`` over the inputs ``xs``."""
  diff = scale = 0.0
  for x in xs:
    a = np.asarray(a_model(x), np.float64)
    b = np.asarray(b_model(x), np.float64)
    diff = max(diff, float(np.max(np.abs(a - b))))
    scale = max(scale, float(np.max(np.abs(a))))
  return diff, scale


def _check_inputs(sample_input) -> list[jax.Array]:
  """The sample and, for a float sample, a standard-normal input of its shape.

  A sample like ``jnp.zeros`` would hide almost any error behind bias-free
  convolutions, so the check never relies on the sample's values alone.
  """
  x = jnp.asarray(sample_input)
  xs = [x]
  if jnp.issubdtype(x.dtype, jnp.floating) and x.size:
    xs.append(jnp.asarray(np.random.default_rng(0).normal(size=x.shape), x.dtype))
  return xs


def export(model: nnx.Module, sample_input, *, scheme: str = "channel",
           cut: float | None = None, energy: float | None = None,
           filter_fn: tree_lib.FilterFn | None = None, include_dense: bool = False,
           only_if_smaller: bool = True, strided: bool = True, check: bool = True,
           rtol: float = 1e-4, atol: float = 1e-5) -> tuple[nnx.Module, dict[str, Any]]:
  """Decomposes ``model`` and reports what changed.

  Args:
    model: the trained model.
    sample_input: one input batch (its shape fixes the FLOP count; the check
      runs on it and, for a float sample, on a standard-normal input of the
      same shape).
    scheme, cut, energy, filter_fn, include_dense, only_if_smaller, strided:
      as in :func:`decompose`.
    check: compare (in eval mode) the factored model's outputs with those of
      the *low-rank model* -- ``model`` with each factored kernel replaced by
      its rank-``r`` approximation -- and raise ``AssertionError`` when they
      differ by more than ``atol + rtol * max|output|``.
    rtol, atol: tolerances of the check.

  Returns:
    ``(factored model, report)``; ``report`` holds ``params_before/after``,
    ``flops_before/after`` (multiply-adds per example, conv and dense),
    ``conv_flops_before/after`` (conv only: the paper's convention), their
    ratios, ``layers`` (``{path: {rank, full_rank, scheme}}``), and
    ``max_abs_diff_vs_low_rank`` / ``max_abs_diff_vs_original`` (eval mode,
    the largest over the check's inputs).
  """
  from sparsejax import compact  # pylint: disable=import-outside-toplevel
  cut, energy = _check_choice(cut, energy)  # the report names the cut actually used (0.05 default)
  new = decompose(model, scheme=scheme, cut=cut, energy=energy, filter_fn=filter_fn,
                  include_dense=include_dense, only_if_smaller=only_if_smaller,
                  strided=strided)
  before, after = compact.count(model, sample_input), compact.count(new, sample_input)
  ref, orig, fac = nnx.clone(_low_rank_reference(model, new)), nnx.clone(model), nnx.clone(new)
  for m in (ref, orig, fac):
    m.eval()
  xs = _check_inputs(sample_input)
  diff_low, scale = _max_diff(ref, fac, xs)
  diff_orig, _ = _max_diff(orig, fac, xs)
  if check and not diff_low <= atol + rtol * scale:
    raise AssertionError(
        f"the factored model's outputs differ from the low-rank model's by {diff_low:.3g} "
        f"(output scale {scale:.3g}); please report this as a bug")
  cb, ca = _conv_flops(model, before), _conv_flops(new, after)
  report = {
      "scheme": scheme, "cut": cut, "energy": energy,
      "params_before": before.params, "params_after": after.params,
      "flops_before": before.flops, "flops_after": after.flops,
      "conv_flops_before": cb, "conv_flops_after": ca,
      "params_ratio": before.params / max(after.params, 1),
      "flops_ratio": before.flops / max(after.flops, 1),
      "conv_flops_ratio": cb / max(ca, 1),
      "flops_convention": "multiply-adds per example",
      "layers": {k: {"rank": v.rank, "full_rank": v.full_rank, "scheme": v.scheme}
                 for k, v in factored_layers(new).items()},
      "max_abs_diff_vs_low_rank": diff_low,
      "max_abs_diff_vs_original": diff_orig,
  }
  return new, report
