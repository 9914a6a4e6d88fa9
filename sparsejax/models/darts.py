"""DARTS cell operations, genotypes and the evaluation network built from a genotype.

The DARTS search space (Liu, Simonyan, Yang, ICLR 2019): a cell has two input
nodes (the outputs of the two previous cells, after a 1x1 preprocessing conv),
``steps`` intermediate nodes and one output, the channel concatenation of the
last ``multiplier`` intermediate nodes. An edge applies one of the candidate
operations of :data:`PRIMITIVES` to an earlier node; in a reduction cell the
edges leaving the two input nodes have stride 2.

Operations (``C`` channels in and out, stride ``s``):

* ``none``: zeros (subsampled by ``s``);
* ``max_pool_3x3`` / ``avg_pool_3x3``: 3x3 pooling, padding 1 (the average
  ignores padded pixels);
* ``skip_connect``: identity, or :class:`FactorizedReduce` when ``s = 2``;
* ``sep_conv_kxk``: twice (relu, kxk depthwise conv, 1x1 conv, BN), the first
  with stride ``s``;
* ``dil_conv_kxk``: relu, kxk depthwise conv with dilation 2, 1x1 conv, BN.

A genotype (:class:`Genotype`) names, for each intermediate node ``i``, two
``(op, input)`` pairs; inputs ``0`` and ``1`` are the cell inputs and ``j >= 2``
is intermediate node ``j - 2``. :class:`DartsEvalNet` stacks cells of a
genotype (reduction cells at 1/3 and 2/3 of the depth) and is registered as
``"darts_eval"`` in :func:`sparsejax.models.get_model`.

Differences from the DARTS evaluation recipe, all ours: no auxiliary head, no
drop-path, Kaiming-normal (fan-in) conv initialisation.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sparsejax.models.lenet import _check_nhwc, _check_positive_int, _check_widths, _config_dict
from sparsejax.models.vgg import _check_momentum

__all__ = [
    "PRIMITIVES",
    "Genotype",
    "DARTS_V2",
    "parse_genotype",
    "genotype_to_json",
    "reduction_cells",
    "BatchStatNorm",
    "ReLUConvBN",
    "DepthwiseConv",
    "DilConv",
    "SepConv",
    "FactorizedReduce",
    "make_op",
    "DartsEvalCell",
    "DartsEvalNet",
]

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
              "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

# He-normal on the fan-in (for a depthwise kernel the fan-in is k * k).
_CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")

NormFactory = Callable[[int, nnx.Rngs], nnx.Module]

# Widest depthwise conv that runs as a dense conv with a diagonal kernel on the CPU.
_DENSE_DEPTHWISE_MAX = 128
_GROUPED_DEPTHWISE = contextvars.ContextVar("sparsejax_grouped_depthwise", default=False)


@contextlib.contextmanager
def grouped_depthwise():
  """Within this context :class:`DepthwiseConv` always traces as the grouped conv.

  Its CPU fast path (a dense conv with a diagonal kernel) computes the same
  outputs, but a jaxpr reader would see C times the multiply-adds and a
  channel-mixing kernel. :mod:`sparsejax.compact` traces models inside this
  context, so counts and removable channels are the same on every backend.
  """
  token = _GROUPED_DEPTHWISE.set(True)
  try:
    yield
  finally:
    _GROUPED_DEPTHWISE.reset(token)


# ----------------------------------------------------------------------------
# Genotypes
# ----------------------------------------------------------------------------


class Genotype(NamedTuple):
  """A discrete cell pair: ``(op, input)`` edges, two per intermediate node.

  Attributes:
    normal: edges of the normal cell; entries ``2i`` and ``2i + 1`` feed
      intermediate node ``i``.
    normal_concat: node indices (``2 ..``) concatenated into the normal cell's output.
    reduce: edges of the reduction cell.
    reduce_concat: node indices concatenated into the reduction cell's output.
  """
  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...]
  reduce_concat: tuple[int, ...]


# The "DARTS (second order)" cells of Liu et al. (2019), their Figure 4.
DARTS_V2 = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
    reduce_concat=(2, 3, 4, 5))


def _check_edges(name: str, edges: Any, prefix: str = "genotype.") -> tuple[tuple[str, int], ...]:
  if isinstance(edges, (str, bytes)) or not isinstance(edges, Sequence) or not edges \
      or len(edges) % 2:
    raise ValueError(f"{prefix}{name} must be a non-empty list of an even number of "
                     f"[op, input] pairs (two per intermediate node), got {edges!r}")
  out = []
  for k, edge in enumerate(edges):
    if isinstance(edge, (str, bytes)) or not isinstance(edge, Sequence) or len(edge) != 2:
      raise ValueError(f"{prefix}{name}[{k}] must be an [op, input] pair, got {edge!r}")
    op, j = edge
    if op not in PRIMITIVES:
      raise ValueError(f"{prefix}{name}[{k}] names op {op!r}; allowed: {PRIMITIVES}")
    node = k // 2
    if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < node + 2:
      raise ValueError(
          f"{prefix}{name}[{k}] feeds intermediate node {node}, so its input must be an "
          f"int in [0, {node + 2}) (0, 1: cell inputs; j >= 2: node j - 2), got {j!r}")
    out.append((str(op), int(j)))
  return tuple(out)


def _check_concat(name: str, concat: Any, num_nodes: int, low: int = 0,
                  prefix: str = "genotype.") -> tuple[int, ...]:
  """``low = 2`` for a reduction cell: its inputs (0, 1) are at the input
  resolution, its nodes at half of it, so only nodes can be concatenated."""
  if isinstance(concat, (str, bytes)) or not isinstance(concat, Sequence) or not concat:
    raise ValueError(f"{prefix}{name} must be a non-empty list of node indices, got {concat!r}")
  for k, j in enumerate(concat):
    if isinstance(j, bool) or not isinstance(j, int) or not low <= j < num_nodes + 2:
      why = " (a reduction cell's inputs 0 and 1 keep the input resolution)" if low else ""
      raise ValueError(f"{prefix}{name}[{k}] must be an int in [{low}, {num_nodes + 2}){why}, "
                       f"got {j!r}")
  return tuple(int(j) for j in concat)


def parse_genotype(genotype: Genotype | Mapping[str, Any] | str) -> Genotype:
  """Returns a checked :class:`Genotype` from a genotype, a dict, JSON text or a JSON file.

  Args:
    genotype: a :class:`Genotype`; a mapping with keys ``normal``,
      ``normal_concat``, ``reduce``, ``reduce_concat``; JSON text of such a
      mapping (starting with ``{``); or the path of a file holding it.

  Returns:
    The genotype with tuples throughout.

  Raises:
    ValueError: naming the offending field when an op is unknown, an input
      index points at a later node, or a key is missing.
  """
  if isinstance(genotype, str):
    text = genotype.strip()
    if not text.startswith("{"):
      if not os.path.isfile(text):
        raise ValueError(f"genotype must be a Genotype, a dict, JSON text or the path of a "
                         f"JSON file; {text!r} is not an existing file")
      with open(text) as f:
        text = f.read()
    try:
      genotype = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"genotype JSON does not parse: {e}") from None
  if isinstance(genotype, Genotype):
    genotype = genotype._asdict()
  if not isinstance(genotype, Mapping):
    raise ValueError(f"genotype must be a Genotype, a dict, JSON text or a path, got "
                     f"{type(genotype).__name__}")
  missing = [k for k in Genotype._fields if k not in genotype]
  if missing:
    raise ValueError(f"genotype lacks the key(s) {missing}; required: {list(Genotype._fields)}")
  normal = _check_edges("normal", genotype["normal"])
  reduce = _check_edges("reduce", genotype["reduce"])
  return Genotype(
      normal=normal, normal_concat=_check_concat("normal_concat", genotype["normal_concat"],
                                                 len(normal) // 2),
      reduce=reduce, reduce_concat=_check_concat("reduce_concat", genotype["reduce_concat"],
                                                 len(reduce) // 2, low=2))


def genotype_to_json(genotype: Genotype) -> str:
  """Canonical JSON text of a genotype (keys in field order, lists for tuples)."""
  g = parse_genotype(genotype)
  return json.dumps({"normal": [list(e) for e in g.normal], "normal_concat": list(g.normal_concat),
                     "reduce": [list(e) for e in g.reduce], "reduce_concat": list(g.reduce_concat)})


def reduction_cells(num_cells: int) -> tuple[int, ...]:
  """Indices of the reduction cells: ``num_cells // 3`` and ``2 * num_cells // 3`` (as DARTS)."""
  num_cells = _check_positive_int("num_cells", num_cells)
  return tuple(sorted({num_cells // 3, 2 * num_cells // 3}))


# ----------------------------------------------------------------------------
# Operations
# ----------------------------------------------------------------------------


class BatchStatNorm(nnx.Module):
  """Batch norm that always uses the batch statistics (no running averages).

  ``(x - mean) / sqrt(var + epsilon)`` over the batch and spatial axes, times
  ``scale`` plus ``bias`` when ``affine``. The search network uses it so that
  its only state is its parameters.
  """

  def __init__(self, num_features: int, *, affine: bool = False, epsilon: float = 1e-5):
    self.epsilon = epsilon
    self.scale = nnx.Param(jnp.ones((num_features,))) if affine else None
    self.bias = nnx.Param(jnp.zeros((num_features,))) if affine else None

  def __call__(self, x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.var(x, axis=(0, 1, 2))
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.scale is not None:
      y = y * self.scale[...] + self.bias[...]
    return y


def _conv(in_features: int, out_features: int, k: int, *, stride: int = 1, padding: int = 0,
          rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(in_features, out_features, (k, k), strides=(stride, stride),
                  padding=((padding, padding), (padding, padding)), use_bias=False,
                  kernel_init=_CONV_INIT, rngs=rngs)


class ReLUConvBN(nnx.Module):
  """``norm(conv_kxk(relu(x)))``."""

  def __init__(self, in_features: int, out_features: int, k: int, *, stride: int = 1,
               padding: int = 0, norm: NormFactory, rngs: nnx.Rngs):
    self.conv = _conv(in_features, out_features, k, stride=stride, padding=padding, rngs=rngs)
    self.bn = norm(out_features, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(nnx.relu(x)))


class DepthwiseConv(nnx.Module):
  """A k x k depthwise conv (one filter per channel, no bias), kernel ``(k, k, 1, C)`` (HWIO).

  Same parameters and outputs as ``nnx.Conv(C, C, (k, k), feature_group_count=C)``.
  On the CPU, for ``C <= 128``, it runs as an ordinary convolution with the
  diagonal kernel ``kernel * I_C`` of shape ``(k, k, C, C)``: XLA:CPU's grouped
  convolution is 2-10x slower at these widths (measured with forward and
  backward passes on 32x32 inputs, 2 cores), and its gradient with respect to
  ``kernel`` is the diagonal of the dense kernel's. Elsewhere (and for wider
  layers, and inside :func:`grouped_depthwise`) it is the grouped
  ``lax.conv_general_dilated``.
  """

  def __init__(self, features: int, k: int, *, stride: int = 1, padding: int = 0,
               dilation: int = 1, rngs: nnx.Rngs):
    self.k, self.stride, self.padding, self.dilation = k, stride, padding, dilation
    self.kernel = nnx.Param(_CONV_INIT(rngs.params(), (k, k, 1, features)))

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(jnp.result_type(x, self.kernel[...]))
    p, s, d = self.padding, self.stride, self.dilation
    channels = x.shape[-1]
    groups = channels
    if (jax.default_backend() == "cpu" and channels <= _DENSE_DEPTHWISE_MAX
        and not _GROUPED_DEPTHWISE.get()):
      kernel = kernel * jnp.eye(channels, dtype=kernel.dtype)  # (k, k, C, C), diagonal
      groups = 1
    return jax.lax.conv_general_dilated(
        x, kernel, (s, s), ((p, p), (p, p)), rhs_dilation=(d, d),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


class DilConv(nnx.Module):
  """``norm(pointwise(depthwise_kxk(relu(x))))``; the depthwise conv may be dilated."""

  def __init__(self, in_features: int, out_features: int, k: int, *, stride: int, padding: int,
               dilation: int, norm: NormFactory, rngs: nnx.Rngs):
    self.depthwise = DepthwiseConv(in_features, k, stride=stride, padding=padding,
                                   dilation=dilation, rngs=rngs)
    self.pointwise = _conv(in_features, out_features, 1, rngs=rngs)
    self.bn = norm(out_features, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.pointwise(self.depthwise(nnx.relu(x))))


class SepConv(nnx.Module):
  """Two undilated :class:`DilConv` blocks; only the first has stride ``stride``."""

  def __init__(self, in_features: int, out_features: int, k: int, *, stride: int, padding: int,
               norm: NormFactory, rngs: nnx.Rngs):
    self.first = DilConv(in_features, in_features, k, stride=stride, padding=padding,
                         dilation=1, norm=norm, rngs=rngs)
    self.second = DilConv(in_features, out_features, k, stride=1, padding=padding,
                          dilation=1, norm=norm, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.second(self.first(x))


class FactorizedReduce(nnx.Module):
  """Halves the resolution: two stride-2 1x1 convs on ``x`` and on ``x`` shifted by one pixel.

  ``norm(concat(conv_a(relu(x)), conv_b(relu(x)[:, 1:, 1:])))``; the shifted
  input is zero-padded at the bottom/right so odd sizes work too.
  """

  def __init__(self, in_features: int, out_features: int, *, norm: NormFactory,
               rngs: nnx.Rngs):
    half = out_features // 2
    self.conv_a = _conv(in_features, half, 1, stride=2, rngs=rngs)
    self.conv_b = _conv(in_features, out_features - half, 1, stride=2, rngs=rngs)
    self.bn = norm(out_features, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(x)
    shifted = jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    return self.bn(jnp.concatenate([self.conv_a(x), self.conv_b(shifted)], axis=-1))


class Zero(nnx.Module):
  """The ``none`` op: zeros shaped like the (subsampled) input."""

  def __init__(self, stride: int):
    self.stride = stride

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])


class Identity(nnx.Module):
  """``skip_connect`` with stride 1."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


class Pool(nnx.Module):
  """3x3 max or average pooling with padding 1 (the average ignores the padding)."""

  def __init__(self, kind: str, stride: int):
    self.kind = kind
    self.stride = stride

  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(window_shape=(3, 3), strides=(self.stride, self.stride),
              padding=((1, 1), (1, 1)))
    if self.kind == "max":
      return nnx.max_pool(x, **kw)
    return nnx.avg_pool(x, count_include_pad=False, **kw)


def make_op(name: str, channels: int, stride: int, *, norm: NormFactory,
            rngs: nnx.Rngs) -> nnx.Module:
  """Builds candidate operation ``name`` (one of :data:`PRIMITIVES`) on ``channels`` channels.

  Args:
    name: the op's name.
    channels: input and output channels.
    stride: 1, or 2 on the edges of a reduction cell that leave its inputs.
    norm: ``(num_features, rngs) -> module`` building the batch norms.
    rngs: ``nnx.Rngs`` for the initialisers.

  Returns:
    The module, mapping ``(N, H, W, channels)`` to ``(N, ceil(H / stride), ceil(W / stride),
    channels)``.
  """
  if name not in PRIMITIVES:
    raise ValueError(f"op name must be one of {PRIMITIVES}, got {name!r}")
  if stride not in (1, 2):
    raise ValueError(f"stride must be 1 or 2, got {stride!r}")
  if name == "none":
    return Zero(stride)
  if name in ("max_pool_3x3", "avg_pool_3x3"):
    return Pool(name[:3], stride)
  if name == "skip_connect":
    return Identity() if stride == 1 else FactorizedReduce(channels, channels, norm=norm, rngs=rngs)
  k = int(name[-1])
  if name.startswith("sep_conv"):
    return SepConv(channels, channels, k, stride=stride, padding=k // 2, norm=norm, rngs=rngs)
  return DilConv(channels, channels, k, stride=stride, padding=k - 1, dilation=2, norm=norm,
                 rngs=rngs)


def preprocess(in_features: int, out_features: int, *, reduce_input: bool, norm: NormFactory,
               rngs: nnx.Rngs) -> nnx.Module:
  """A cell's input conv: FactorizedReduce after a reduction cell, else a 1x1 ReLUConvBN."""
  if reduce_input:
    return FactorizedReduce(in_features, out_features, norm=norm, rngs=rngs)
  return ReLUConvBN(in_features, out_features, 1, norm=norm, rngs=rngs)


# ----------------------------------------------------------------------------
# The evaluation network
# ----------------------------------------------------------------------------


class DartsEvalCell(nnx.Module):
  """One discrete cell: per intermediate node, the sum of its two genotype edges.

  Args:
    edges: ``(op, input)`` pairs, two per intermediate node.
    concat: node indices concatenated into the output.
    prev_prev_features: channels of the cell's first input (two cells back).
    prev_features: channels of the second input (the previous cell).
    features: channels of every node inside the cell.
    reduction: halve the resolution (stride 2 on edges from the inputs).
    reduce_input: the previous cell was a reduction cell, so the first input
      has twice the resolution of the second.
    norm: batch-norm factory.
    rngs: ``nnx.Rngs`` for the initialisers.
  """

  def __init__(self, edges: Sequence[tuple[str, int]], concat: Sequence[int], *,
               prev_prev_features: int, prev_features: int, features: int, reduction: bool,
               reduce_input: bool, norm: NormFactory, rngs: nnx.Rngs):
    # The checks of parse_genotype: Python indexing would take a negative input or concat
    # index (or a later node's) silently.
    edges = _check_edges("edges", edges, prefix="")
    concat = _check_concat("concat", concat, len(edges) // 2, low=2 if reduction else 0,
                           prefix="")
    self.pre0 = preprocess(prev_prev_features, features, reduce_input=reduce_input, norm=norm,
                           rngs=rngs)
    self.pre1 = preprocess(prev_features, features, reduce_input=False, norm=norm, rngs=rngs)
    self.ops = nnx.List([make_op(name, features, 2 if reduction and j < 2 else 1, norm=norm,
                                 rngs=rngs) for name, j in edges])
    self.inputs = tuple(j for _, j in edges)
    self.concat = tuple(concat)

  def __call__(self, s0: jax.Array, s1: jax.Array) -> jax.Array:
    states = [self.pre0(s0), self.pre1(s1)]
    for i in range(len(self.inputs) // 2):
      a, b = 2 * i, 2 * i + 1
      states.append(self.ops[a](states[self.inputs[a]]) + self.ops[b](states[self.inputs[b]]))
    return jnp.concatenate([states[j] for j in self.concat], axis=-1)


class DartsEvalNet(nnx.Module):
  """The network DARTS trains from a genotype: a stem, ``num_cells`` cells, pooling, a classifier.

  Layout: 3x3 conv (``stem_multiplier * widths[0]`` channels, no bias) + BN;
  cells; global average pooling; dense layer. Cells at :func:`reduction_cells`
  are reduction cells; the cells of stage ``s`` (``s`` = number of reduction
  cells so far, the reduction cell included) use ``widths[s]`` channels per
  node (DARTS: ``(C, 2C, 4C)``). Each cell takes the outputs of the two
  previous cells (the stem output for the first two).

  Args:
    genotype: anything :func:`parse_genotype` takes; ``None`` means
      :data:`DARTS_V2`.
    num_cells: number of cells (DARTS CIFAR-10 evaluation: 20).
    widths: node channels of the three stages (DARTS: 36, 72, 144).
    stem_multiplier: stem channels over ``widths[0]``.
    num_classes: number of logits.
    in_channels: channels of the NHWC input.
    bn_momentum: running-average decay of the batch norms.
    rngs: ``nnx.Rngs`` for the initialisers.

  ``config["genotype"]`` holds the canonical JSON text of the genotype, so the
  config does not depend on a file. Parameter paths: ``stem/conv/kernel``,
  ``stem/bn/scale``, ``cells/<i>/pre0/...``, ``cells/<i>/ops/<k>/...`` (edge
  ``k`` of the genotype), ``fc/kernel``. Not implemented (DARTS uses them for
  its final numbers): the auxiliary head, drop-path and cutout.
  """

  def __init__(self, *, genotype: Genotype | Mapping[str, Any] | str | None = None,
               num_cells: int = 20, widths: Sequence[int] = (36, 72, 144),
               stem_multiplier: int = 3, num_classes: int = 10, in_channels: int = 3,
               bn_momentum: float = 0.9, rngs: nnx.Rngs):
    g = parse_genotype(DARTS_V2 if genotype is None else genotype)
    num_cells = _check_positive_int("num_cells", num_cells)
    widths = _check_widths("widths", widths, 3)
    stem_multiplier = _check_positive_int("stem_multiplier", stem_multiplier)
    num_classes = _check_positive_int("num_classes", num_classes)
    in_channels = _check_positive_int("in_channels", in_channels)
    bn_momentum = _check_momentum(bn_momentum)
    self._config = (("genotype", genotype_to_json(g)), ("num_cells", num_cells),
                    ("widths", widths), ("stem_multiplier", stem_multiplier),
                    ("num_classes", num_classes), ("in_channels", in_channels),
                    ("bn_momentum", bn_momentum))
    self.in_channels = in_channels

    def norm(features: int, rngs: nnx.Rngs) -> nnx.Module:
      return nnx.BatchNorm(features, momentum=bn_momentum, epsilon=1e-5, rngs=rngs)

    stem_features = stem_multiplier * widths[0]
    self.stem = _Stem(in_channels, stem_features, norm(stem_features, rngs), rngs)
    reductions = reduction_cells(num_cells)
    prev_prev, prev, stage, reduce_input = stem_features, stem_features, 0, False
    cells = []
    for i in range(num_cells):
      reduction = i in reductions
      stage += int(reduction)
      edges, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
      cells.append(DartsEvalCell(edges, concat, prev_prev_features=prev_prev,
                                 prev_features=prev, features=widths[stage], reduction=reduction,
                                 reduce_input=reduce_input, norm=norm, rngs=rngs))
      prev_prev, prev, reduce_input = prev, len(concat) * widths[stage], reduction
    self.cells = nnx.List(cells)
    self.fc = nnx.Linear(prev, num_classes, rngs=rngs)

  @property
  def config(self) -> dict[str, Any]:
    """Constructor keyword arguments (all but ``rngs``) as a fresh dict."""
    return _config_dict(self._config)

  @property
  def genotype(self) -> Genotype:
    return parse_genotype(self._config[0][1])

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(batch, height, width, in_channels)`` to logits."""
    _check_nhwc(x, self.in_channels)
    s0 = s1 = self.stem(x)
    for cell in self.cells:
      s0, s1 = s1, cell(s0, s1)
    return self.fc(jnp.mean(s1, axis=(1, 2)))


class _Stem(nnx.Module):
  """``bn(conv3x3(x))`` (no bias, padding 1)."""

  def __init__(self, in_features: int, out_features: int, bn: nnx.Module, rngs: nnx.Rngs):
    self.conv = _conv(in_features, out_features, 3, padding=1, rngs=rngs)
    self.bn = bn

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x))
