"""Tests for sparsejax.compact: channel groups read from the jaxpr, compaction with
equal outputs, parameter/FLOP counts against hand-computed values, save/load.

Deep models use their real structure with small widths (e.g. ResNet-56 with
widths (4, 8, 16)) so that the file runs in well under a minute on a CPU.
"""

from __future__ import annotations

import doctest
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsejax import compact as cp
from sparsejax import models
from sparsejax.tree import path_str

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = {
    "lenet300_100": (dict(widths=(12, 8)), (2, 28, 28, 1)),
    "vgg11_nobn": (dict(widths=(8, "M", 12, 16), batch_norm=False), (2, 16, 16, 3)),
    "lenet5": (dict(widths=(6, 8, 16)), (2, 28, 28, 1)),
    "vgg11": (dict(widths=(8, "M", 12, "M", 16, 16, "M", 16)), (2, 32, 32, 3)),
    "resnet20": (dict(widths=(4, 8, 16)), (2, 8, 8, 3)),
    "resnet32": (dict(widths=(4, 8, 8)), (2, 8, 8, 3)),
    "resnet56": (dict(widths=(4, 8, 16)), (2, 8, 8, 3)),
}


# --------------------------------------------------------------------------- helpers


def _build(make, seed=0):
  """Builds a model abstractly and fills it from numpy (no XLA compile of initialisers).

  Kernels get He-normal values, biases and BN scales/shifts standard normal ones,
  running means normal and running variances in [0.5, 2] -- so eval-mode batch
  norm is not the identity.
  """
  model = nnx.eval_shape(make)
  rng = np.random.default_rng(seed)
  state = nnx.state(model)
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  leaves = []
  for p, leaf in flat:
    path, shape = path_str(p), leaf.shape
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaves.append(jax.random.key(seed) if shape == () else
                    jax.random.split(jax.random.key(seed), shape))
      continue
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      leaves.append(jnp.zeros(shape, leaf.dtype))
      continue
    if path.endswith("kernel"):
      fan_in = int(np.prod(shape[:-1]))
      a = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)
    elif path.endswith("/var"):
      a = rng.uniform(0.5, 2.0, size=shape)
    else:
      a = rng.normal(size=shape) * (0.3 if path.endswith("bias") else 1.0)
    leaves.append(jnp.asarray(a, leaf.dtype))
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))
  return model


def _model(name, seed=0, **over):
  kw, shape = SMALL[name]
  kw = dict(kw, **over)
  if name in ("lenet300_100",):
    kw.setdefault("in_features", int(np.prod(shape[1:])))
  if name.endswith("_nobn"):
    name = name[:-len("_nobn")]
  if name.startswith("vgg"):
    kw.setdefault("input_size", shape[1])
  return _build(lambda: models.get_model(name, rngs=nnx.Rngs(0), **kw), seed), shape


def _arrays(model):
  state = nnx.state(model)
  flat = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  return {path_str(p): np.array(v.get_value()) for p, v in flat}, {
      path_str(p): v for p, v in flat}


def _zero_producers(model, groups, *, skip=()):
  """Zeroes what produces each channel: kernel output slices, biases, BN scale/shift.

  Consumers' input slices and BN running statistics are left alone, as after
  network slimming or filter-level group lasso. Members whose path starts with
  a prefix in ``skip`` are left alone too.
  """
  arrays, variables = _arrays(model)
  for g in groups:
    for path, axis, index in g.members:
      if not isinstance(variables[path], nnx.Param) or path.startswith(tuple(skip)):
        continue
      a = arrays[path]
      producer = (a.ndim >= 2 and axis == a.ndim - 1) or (
          a.ndim == 1 and path.rsplit("/", 1)[-1] in ("bias", "scale"))
      if producer:
        idx = [slice(None)] * a.ndim
        idx[axis] = index
        a[tuple(idx)] = 0
  for path, v in variables.items():
    v.set_value(jnp.asarray(arrays[path]))


def _outputs(model, x):
  m = nnx.clone(model)
  m.eval()
  return np.asarray(m(x))


def _assert_same_outputs(a_model, b_model, shape, seed=0):
  x = jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)
  a, b = _outputs(a_model, x), _outputs(b_model, x)
  assert a.shape == b.shape
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(a).max()))


def _kernel_out_widths(model):
  arrays, _ = _arrays(model)
  return {p.rsplit("/", 1)[0]: a.shape[-1] for p, a in arrays.items()
          if p.endswith("kernel") and a.ndim >= 2}


def _expected_widths(model, analysis, zeroed_groups):
  """Out width of every kernel after removing ``zeroed_groups`` (at least 1 kept)."""
  zeroed = {(p, ax, i) for g in zeroed_groups for p, ax, i in g.members}
  out = {}
  arrays, _ = _arrays(model)
  for p, a in arrays.items():
    if p.endswith("kernel") and a.ndim >= 2:
      n = a.shape[-1]
      gone = sum((p, a.ndim - 1, i) in zeroed for i in range(n))
      out[p.rsplit("/", 1)[0]] = max(1, n - gone)
  return out


# --------------------------------------------------------------------------- channel groups


def _group_of(analysis, path, axis, index):
  for g in analysis.groups:
    if (path, axis, index) in g.members:
      return g
  raise AssertionError(f"no group holds {(path, axis, index)}")


def test_lenet5_flatten_couples_channel_with_strided_dense_rows():
  model, shape = _model("lenet5")  # conv2 has 8 channels, 4x4 spatial before the flatten
  an = cp.analyze(model, jnp.zeros(shape))
  for c in (0, 5):
    g = _group_of(an, "conv2/kernel", 3, c)
    rows = sorted(i for p, ax, i in g.members if p == "fc1/kernel" and ax == 0)
    # NHWC flatten: element (h, w, c) is row (h * 4 + w) * 8 + c.
    assert rows == [(h * 4 + w) * 8 + c for h in range(4) for w in range(4)]
    others = sorted((p, ax) for p, ax, _ in g.members if p != "fc1/kernel")
    assert others == [("conv2/bias", 0), ("conv2/kernel", 3)]
  # Dense layer: a hidden unit couples fc1's column and bias with fc2's row.
  g = _group_of(an, "fc1/kernel", 1, 3)
  assert sorted(g.members) == [("fc1/bias", 0, 3), ("fc1/kernel", 1, 3), ("fc2/kernel", 0, 3)]
  # Input channels are no channel group (the input is fixed); logits are pinned.
  assert not any(m[:2] == ("conv1/kernel", 2) for g in an.groups for m in g.members)
  assert _group_of(an, "fc2/kernel", 1, 0).pinned
  assert not _group_of(an, "conv1/kernel", 3, 0).pinned


def test_resnet_residual_stream_is_one_group_across_stages():
  model, shape = _model("resnet20")  # widths (4, 8, 16), 3 blocks per stage
  an = cp.analyze(model, jnp.zeros(shape))
  g = _group_of(an, "stem/conv/kernel", 3, 1)
  mem = set(g.members)
  # Stem, every block's second conv/BN (output) and first conv (input), and fc.
  for b in range(9):
    assert (f"blocks/{b}/conv2/kernel", 3, 1) in mem
    assert (f"blocks/{b}/bn2/scale", 0, 1) in mem
    assert (f"blocks/{b}/bn2/mean", 0, 1) in mem
    assert (f"blocks/{b}/conv1/kernel", 2, 1) in mem
  assert ("fc/kernel", 0, 1) in mem
  assert ("stem/bn/bias", 0, 1) in mem
  # Channel 5 of stage 2 is a zero-padded channel in the shortcut of block 3: it
  # belongs to stages 2 and 3 only, not to the stem.
  g5 = set(_group_of(an, "blocks/3/conv2/kernel", 3, 5).members)
  assert ("blocks/8/conv2/kernel", 3, 5) in g5 and ("fc/kernel", 0, 5) in g5
  assert not any(p.startswith("stem") or p.startswith(("blocks/0/", "blocks/1/", "blocks/2/"))
                 for p, _, _ in g5)
  # A block's inner channel is its own group.
  inner = set(_group_of(an, "blocks/4/conv1/kernel", 3, 2).members)
  assert {p for p, _, _ in inner} == {"blocks/4/conv1/kernel", "blocks/4/bn1/scale",
                                      "blocks/4/bn1/bias", "blocks/4/bn1/mean",
                                      "blocks/4/bn1/var", "blocks/4/conv2/kernel"}
  # 16 stream groups + 4+4+4+8+8+8+16+16+16 inner groups + 10 logits.
  assert len(an.groups) == 16 + 84 + 10


# --------------------------------------------------------------------------- compaction


@pytest.mark.parametrize("name", list(SMALL))
def test_compact_random_channels_equal_outputs(name):
  model, shape = _model(name, seed=1)
  an = cp.analyze(model, jnp.zeros(shape))
  rng = np.random.default_rng(7)
  chosen = [g for g in an.groups if not g.pinned and rng.random() < 0.4]
  assert chosen
  _zero_producers(model, chosen)
  expected = _expected_widths(model, an, chosen)
  small, plan = cp.compact(model, jnp.zeros(shape), return_plan=True)
  assert plan.method == "config"
  assert _kernel_out_widths(small) == expected
  assert plan.removed_groups <= len(chosen)
  assert cp.count(small, jnp.zeros(shape)).params < cp.count(model, jnp.zeros(shape)).params
  _assert_same_outputs(model, small, shape, seed=3)
  # Rebuilt through the constructor: config and type match.
  assert type(small) is type(model)
  rebuilt = nnx.eval_shape(lambda: type(model)(**small.config, rngs=nnx.Rngs(5)))
  assert jax.tree.map(np.shape, nnx.state(rebuilt)) == jax.tree.map(np.shape, nnx.state(small))


def test_residual_group_kept_unless_zero_in_every_member():
  model, shape = _model("resnet56")
  x = jnp.zeros(shape)
  an = cp.analyze(model, x)
  stream = _group_of(an, "stem/conv/kernel", 3, 2)
  # Zero channel 2 everywhere except in one block's second conv: it stays.
  _zero_producers(model, [stream], skip=("blocks/13/",))
  small = cp.compact(model, x)
  assert _kernel_out_widths(small)["stem/conv"] == 4
  assert _kernel_out_widths(small)["blocks/26/conv2"] == 16
  _assert_same_outputs(model, small, shape)
  # Now zero it in that block too: the whole stream channel goes.
  _zero_producers(model, [stream])
  small = cp.compact(model, x)
  w = _kernel_out_widths(small)
  assert w["stem/conv"] == 3 and w["blocks/8/conv2"] == 3
  assert w["blocks/9/conv2"] == 7 and w["blocks/26/conv2"] == 15
  assert small.config["widths"] == [3, 7, 15]
  _assert_same_outputs(model, small, shape)


def test_multiple_of_rounds_widths_up_keeping_zero_channels():
  model, shape = _model("vgg11")  # widths 8, 12, 16, 16
  x = jnp.zeros(shape)
  an = cp.analyze(model, x)
  # features/0: 5 of 8 channels zero (3 kept); features/1: 3 of 12 (9 kept).
  _zero_producers(model, [_group_of(an, "features/0/conv/kernel", 3, i) for i in (0, 2, 3, 5, 7)]
                  + [_group_of(an, "features/1/conv/kernel", 3, i) for i in (1, 4, 10)])
  plain = cp.compact(model, x)
  assert _kernel_out_widths(plain)["features/0/conv"] == 3
  assert _kernel_out_widths(plain)["features/1/conv"] == 9
  small, plan = cp.compact(model, x, multiple_of=4, return_plan=True)
  w = _kernel_out_widths(small)
  # 3 -> 4 (the first zero channel, 0, comes back); 9 -> 12 (all of them).
  assert w["features/0/conv"] == 4 and w["features/1/conv"] == 12
  assert small.features[1].conv.kernel.shape == (3, 3, 4, 12)
  np.testing.assert_array_equal(  # kept channels 0, 1, 4, 6 in order
      np.asarray(small.features[0].conv.kernel[...]),
      np.asarray(model.features[0].conv.kernel[...])[..., [0, 1, 4, 6]])
  assert plan.removed_groups == 4
  _assert_same_outputs(model, small, shape)
  _, entry = cp.report(model, x, multiple_of=4)
  assert entry["multiple_of"] == 4 and entry["removed_channel_groups"] == 4
  assert entry["flops_after"] == cp.count(small, x).flops
  with pytest.raises(ValueError, match="multiple_of must be a positive int, got 0"):
    cp.compact(model, x, multiple_of=0)


def test_multiple_of_resnet_every_shrunk_axis_is_a_multiple():
  model, shape = _model("resnet20", seed=2, widths=(8, 16, 24))
  x = jnp.zeros(shape)
  an = cp.analyze(model, x)
  rng = np.random.default_rng(3)
  _zero_producers(model, [g for g in an.groups if not g.pinned and rng.random() < 0.7])
  plain = cp.compact(model, x)
  small = cp.compact(model, x, multiple_of=8)
  before, rounded, unrounded = _arrays(model)[0], _arrays(small)[0], _arrays(plain)[0]
  shrunk = 0
  for p, a in rounded.items():
    if p.endswith("kernel"):
      for n0, n1, n2 in zip(before[p].shape, unrounded[p].shape, a.shape):
        # Coupled axes (a residual stream and the option-A shortcut's zero
        # padding of the stream before it) may round each other up further.
        assert n1 <= n2 <= n0
        assert n2 % 8 == 0 or n2 == n0
        shrunk += n2 < n0
  assert shrunk > 0
  _assert_same_outputs(model, small, shape)


def test_bn_scale_zero_shift_positive_is_kept_negative_is_removed():
  model, shape = _model("vgg11")
  x = jnp.zeros(shape)
  f = model.features[1]  # 12 channels
  f.conv.kernel[...] = f.conv.kernel[...].at[..., 0:3].set(0.0)
  f.bn.scale[...] = f.bn.scale[...].at[0:3].set(0.0)
  # Channel 0: relu(0.7) = 0.7, a nonzero constant: kept (folding it into the
  # next conv is not exact at the zero-padded borders).
  # Channels 1, 2: relu(-0.3) = relu(0) = 0: removed.
  f.bn.bias[...] = f.bn.bias[...].at[0:3].set(jnp.array([0.7, -0.3, 0.0]))
  small = cp.compact(model, x)
  assert _kernel_out_widths(small)["features/1/conv"] == 10
  _assert_same_outputs(model, small, shape)
  # Scale zero with a nonzero kernel slice: the channel is still a constant.
  model2, _ = _model("vgg11", seed=1)
  model2.features[2].bn.scale[...] = model2.features[2].bn.scale[...].at[4].set(0.0)
  model2.features[2].bn.bias[...] = model2.features[2].bn.bias[...].at[4].set(-1.0)
  small2 = cp.compact(model2, x)
  assert _kernel_out_widths(small2)["features/2/conv"] == 15
  _assert_same_outputs(model2, small2, shape)


def test_channel_read_by_zero_weights_only_is_removed():
  model, shape = _model("vgg11")
  x = jnp.zeros(shape)
  # Channel 6 of features/0 is nonzero but features/1 reads it with zero weights.
  model.features[1].conv.kernel[...] = model.features[1].conv.kernel[...].at[:, :, 6, :].set(0.0)
  small = cp.compact(model, x)
  assert _kernel_out_widths(small)["features/0/conv"] == 7
  assert small.features[1].conv.kernel.shape == (3, 3, 7, 12)
  _assert_same_outputs(model, small, shape)


def test_nothing_to_remove_returns_equal_model():
  for name in ("lenet5", "resnet20"):
    model, shape = _model(name)
    small, plan = cp.compact(model, jnp.zeros(shape), return_plan=True)
    assert plan.method == "unchanged" and plan.removed_groups == 0
    assert jax.tree.map(np.shape, nnx.state(small)) == jax.tree.map(np.shape, nnx.state(model))
    a, _ = _arrays(model)
    b, _ = _arrays(small)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    _assert_same_outputs(model, small, shape)


def test_compact_leaves_the_model_alone():
  model, shape = _model("resnet20")
  before, _ = _arrays(model)
  an = cp.analyze(model, jnp.zeros(shape))
  _zero_producers(model, [g for g in an.groups if not g.pinned][:5])
  zeroed, _ = _arrays(model)
  cp.compact(model, jnp.zeros(shape))
  after, _ = _arrays(model)
  assert all(np.array_equal(zeroed[k], after[k]) for k in after)
  assert model.stem.bn.use_running_average is False  # still in training mode
  del before


# --------------------------------------------------------------------------- user-defined module


class TwoBranchNet(nnx.Module):
  """Nothing like the shipped models: two conv branches concatenated, one BN over
  both, GELU, average pooling, NHWC flatten, dense + tanh, dropout (a PRNG key in
  the state), dense."""

  def __init__(self, rngs: nnx.Rngs):
    self.a = nnx.Conv(3, 5, (3, 3), padding="SAME", rngs=rngs)
    self.b = nnx.Conv(3, 4, (1, 1), padding="VALID", use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(9, rngs=rngs)
    self.fc1 = nnx.Linear(4 * 4 * 9, 7, rngs=rngs)
    self.drop = nnx.Dropout(0.2, rngs=rngs)
    self.fc2 = nnx.Linear(7, 3, rngs=rngs)

  def __call__(self, x):
    y = jnp.concatenate([self.a(x), self.b(x)], axis=-1)
    y = nnx.gelu(self.bn(y))
    y = nnx.avg_pool(y, (2, 2), strides=(2, 2))
    y = y.reshape(y.shape[0], -1)
    return self.fc2(self.drop(jnp.tanh(self.fc1(y))))


def _two_branch():
  return _build(lambda: TwoBranchNet(nnx.Rngs(0)))


def test_user_module_concat_flatten_gelu():
  model = _two_branch()
  shape = (2, 8, 8, 3)
  x = jnp.zeros(shape)
  an = cp.analyze(model, x)
  # Concatenated channel 5 + j is branch b's channel j, shared with BN entry 5 + j.
  g = _group_of(an, "b/kernel", 3, 1)
  assert ("bn/scale", 0, 6) in g.members and ("a/kernel", 3, 1) not in g.members
  rows = sorted(i for p, ax, i in g.members if p == "fc1/kernel")
  assert rows == [k * 9 + 6 for k in range(16)]
  # Zero branch-a channels 0, 3, branch-b channel 1 (with their BN entries), and
  # hidden unit 4 of fc1.
  for c in (0, 3):
    model.a.kernel[...] = model.a.kernel[...].at[..., c].set(0.0)
    model.a.bias[...] = model.a.bias[...].at[c].set(0.0)
  model.b.kernel[...] = model.b.kernel[...].at[..., 1].set(0.0)
  for c in (0, 3, 6):
    model.bn.scale[...] = model.bn.scale[...].at[c].set(0.0)
    model.bn.bias[...] = model.bn.bias[...].at[c].set(0.0)
  model.fc1.kernel[...] = model.fc1.kernel[...].at[:, 4].set(0.0)
  model.fc1.bias[...] = model.fc1.bias[...].at[4].set(0.0)
  small, plan = cp.compact(model, x, return_plan=True)
  assert plan.method == "state"
  assert small.a.kernel.shape == (3, 3, 3, 3) and small.b.kernel.shape == (1, 1, 3, 3)
  assert small.bn.scale.shape == (6,) and small.bn.num_features == 6
  assert small.fc1.kernel.shape == (4 * 4 * 6, 6) and small.fc2.kernel.shape == (6, 3)
  assert small.fc1.in_features == 96 and small.a.out_features == 3
  assert plan.layer_widths() == {"a": (5, 3), "b": (4, 3), "fc1": (7, 6), "fc2": (3, 3)}
  _assert_same_outputs(model, small, shape)
  _assert_same_outputs(model, small, (4,) + shape[1:], seed=1)


class SeparableNet(nnx.Module):
  """Depthwise-separable convs, a shortcut that concatenates zero channels, an NCHW
  flatten (transpose, then reshape) and a LayerNorm head (which pins its width)."""

  def __init__(self, rngs: nnx.Rngs):
    self.pw1 = nnx.Conv(3, 6, (1, 1), rngs=rngs)
    self.dw = nnx.Conv(6, 6, (3, 3), feature_group_count=6, rngs=rngs)
    self.pw2 = nnx.Conv(6, 10, (1, 1), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(10, rngs=rngs)
    self.dw2 = nnx.Conv(10, 10, (3, 3), feature_group_count=10, rngs=rngs)
    self.fc = nnx.Linear(10 * 5 * 5, 5, rngs=rngs)
    self.ln = nnx.LayerNorm(5, rngs=rngs)
    self.out = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.relu6(self.pw1(x))
    h = jax.nn.swish(self.dw(h))
    s = jnp.concatenate([h, jnp.zeros(h.shape[:-1] + (4,), h.dtype)], axis=-1)
    h = nnx.relu(self.bn(self.pw2(h)) + s)
    h = nnx.max_pool(self.dw2(h), (2, 2), strides=(2, 2))
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)
    return self.out(self.ln(self.fc(h)))


def test_user_module_depthwise_concat_shortcut_nchw_flatten():
  model = _build(lambda: SeparableNet(nnx.Rngs(0)))
  x = jnp.zeros((2, 10, 10, 3))
  an = cp.analyze(model, x)
  g = _group_of(an, "pw1/kernel", 3, 1)
  # The channel runs through both depthwise convs, the shortcut and the flatten:
  # NCHW flatten puts channel 1 at rows 25..49 of fc.
  assert ("dw/kernel", 3, 1) in g.members and ("dw2/kernel", 3, 1) in g.members
  assert ("pw2/kernel", 3, 1) in g.members and ("bn/scale", 0, 1) in g.members
  assert sorted(i for p, _, i in g.members if p == "fc/kernel") == list(range(25, 50))
  assert _group_of(an, "fc/kernel", 1, 0).pinned  # LayerNorm normalises over it
  # Channel 8 exists only in the wide stream (a zero channel of the shortcut).
  g8 = _group_of(an, "pw2/kernel", 3, 8)
  assert not any(p.startswith(("pw1", "dw/")) for p, _, _ in g8.members)
  assert an.removes_padding is False  # nothing zeroed yet
  _zero_producers(model, [g, _group_of(an, "pw1/kernel", 3, 4), g8])
  # The model hard-codes the 4 zero channels of its shortcut, so channel 8 cannot
  # go: the first rebuild fails its check and compact retries with it kept.
  assert cp.analyze(model, x).removes_padding
  assert cp.analyze(model, x, resizable_padding=False).new_shapes["pw2/kernel"] == (1, 1, 4, 8)
  small, plan = cp.compact(model, x, return_plan=True)
  assert not plan.analysis.removes_padding
  assert plan.layer_widths() == {"dw": (6, 4), "dw2": (10, 8), "fc": (5, 5), "out": (3, 3),
                                 "pw1": (6, 4), "pw2": (10, 8)}
  assert small.dw.feature_group_count == 4 and small.dw2.feature_group_count == 8
  _assert_same_outputs(model, small, x.shape)


class CumsumNet(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.fc = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    y = jnp.cumsum(self.conv(x), axis=-1)  # mixes channels in an order-dependent way
    return self.fc(y.mean(axis=(1, 2)))


def test_unsupported_operation_raises_naming_it():
  model = _build(lambda: CumsumNet(nnx.Rngs(0)))
  with pytest.raises(cp.UnsupportedOperationError, match=r"cumsum.*test_compact\.py"):
    cp.compact(model, jnp.zeros((1, 6, 6, 3)))
  with pytest.raises(cp.UnsupportedOperationError, match="cumsum"):
    cp.analyze(model, jnp.zeros((1, 6, 6, 3)))


def test_channel_reductions_and_slices_pin():
  class SoftmaxNet(nnx.Module):

    def __init__(self, rngs):
      self.fc1 = nnx.Linear(5, 6, rngs=rngs)
      self.fc2 = nnx.Linear(6, 2, rngs=rngs)

    def __call__(self, x):
      h = self.fc1(x)
      h = jax.nn.softmax(h, axis=-1)  # normalises over the channels: changes if one goes
      return self.fc2(h[:, :6])

  model = _build(lambda: SoftmaxNet(nnx.Rngs(0)))
  model.fc1.kernel[...] = model.fc1.kernel[...].at[:, 2].set(0.0)
  model.fc1.bias[...] = model.fc1.bias[...].at[2].set(0.0)
  small, plan = cp.compact(model, jnp.zeros((2, 5)), return_plan=True)
  assert plan.method == "unchanged"
  assert small.fc1.kernel.shape == (5, 6)


def test_bad_arguments():
  model, shape = _model("lenet5")
  with pytest.raises(TypeError, match="model must be a flax.nnx.Module"):
    cp.compact({"a": 1}, jnp.zeros(shape))
  with pytest.raises(ValueError, match="leading batch axis"):
    cp.compact(model, jnp.zeros(()))
  with pytest.raises(TypeError, match="sample_input"):
    cp.count(model, "image")
  with pytest.raises(ValueError, match="rtol"):
    cp.compact(model, jnp.zeros(shape), rtol=-1.0)


# --------------------------------------------------------------------------- counting


def test_count_lenet5_by_hand():
  model = _build(lambda: models.get_model("lenet5", rngs=nnx.Rngs(0)))
  for batch in (1, 3):
    c = cp.count(model, jnp.zeros((batch, 28, 28, 1)))
    layers = {l.name: (l.params, l.flops) for l in c.layers}
    assert layers == {
        "conv1": (5 * 5 * 1 * 20 + 20, 24 * 24 * 25 * 1 * 20),
        "conv2": (5 * 5 * 20 * 50 + 50, 8 * 8 * 25 * 20 * 50),
        "fc1": (800 * 500 + 500, 800 * 500),
        "fc2": (500 * 10 + 10, 500 * 10),
    }
    assert c.flops == 288_000 + 1_600_000 + 400_000 + 5_000
    assert c.params == 431_080
    assert [l.name for l in c.layers] == ["conv1", "conv2", "fc1", "fc2"]


def test_count_small_vgg_by_hand_before_and_after():
  widths = (8, "M", 16, "M", 32)
  model = _build(lambda: models.get_model("vgg11", widths=widths, rngs=nnx.Rngs(0)))
  x = jnp.zeros((2, 32, 32, 3))

  def expected(c1, c2, c3):
    flops = (32 * 32 * 9 * 3 * c1 + 16 * 16 * 9 * c1 * c2 + 8 * 8 * 9 * c2 * c3
             + (4 * 4 * c3) * 10)
    params = (9 * 3 * c1 + 2 * c1 + 9 * c1 * c2 + 2 * c2 + 9 * c2 * c3 + 2 * c3
              + 4 * 4 * c3 * 10 + 10)
    return params, flops

  c = cp.count(model, x)
  assert (c.params, c.flops) == expected(8, 16, 32)
  assert {l.name: l.flops for l in c.layers}["features/1/conv"] == 16 * 16 * 9 * 8 * 16
  assert {l.name: l.params for l in c.layers}["features/1/bn"] == 32
  # Remove 3, 5 and 10 channels.
  an = cp.analyze(model, x)
  chosen = []
  for path, n in (("features/0/conv/kernel", 3), ("features/1/conv/kernel", 5),
                  ("features/2/conv/kernel", 10)):
    chosen += [_group_of(an, path, 3, i) for i in range(n)]
  _zero_producers(model, chosen)
  small = cp.compact(model, x)
  c2 = cp.count(small, x)
  assert (c2.params, c2.flops) == expected(5, 11, 22)


def test_count_resnet20_full_size():
  # Shapes are all count needs: an abstract model will do.
  model = nnx.eval_shape(lambda: models.get_model("resnet20", rngs=nnx.Rngs(0)))
  c = cp.count(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  # The widely quoted 0.27M parameters and 41M multiply-adds, exactly:
  stem = 32 * 32 * 27 * 16
  stage = lambda hw, cin, c, n: hw * hw * 9 * (cin * c + c * c) + (n - 1) * 2 * hw * hw * 9 * c * c
  flops = stem + stage(32, 16, 16, 3) + stage(16, 16, 32, 3) + stage(8, 32, 64, 3) + 64 * 10
  assert c.flops == flops == 40_551_040
  assert c.params == 269_722


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_by_name(tmp_path):
  model, shape = _model("resnet20", seed=2)
  x = jnp.zeros(shape)
  an = cp.analyze(model, x)
  _zero_producers(model, [g for g in an.groups if not g.pinned][::3])
  small = cp.compact(model, x)
  d = cp.save(tmp_path / "m", small, name="resnet20", sample_input=x)
  meta = cp.read_metadata(d)
  assert meta["name"] == "resnet20" and meta["build"] == "config"
  assert meta["input_shape"] == [8, 8, 3]
  loaded = cp.load(d)
  assert type(loaded) is models.ResNetCIFAR
  assert loaded.config == small.config
  a, _ = _arrays(small)
  b, _ = _arrays(loaded)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  _assert_same_outputs(model, loaded, shape)
  with pytest.raises(FileExistsError):
    cp.save(d, small, name="resnet20")
  with pytest.raises(ValueError, match="name must be one of"):
    cp.save(tmp_path / "x", small, name="resnet21")


def test_save_load_user_module_by_class_or_template(tmp_path):
  model = _two_branch()
  model.a.kernel[...] = model.a.kernel[...].at[..., 2].set(0.0)
  model.a.bias[...] = model.a.bias[...].at[2].set(0.0)
  model.bn.scale[...] = model.bn.scale[...].at[2].set(0.0)
  model.bn.bias[...] = model.bn.bias[...].at[2].set(0.0)
  x = jnp.zeros((2, 8, 8, 3))
  small = cp.compact(model, x)
  d = cp.save(tmp_path / "u", small)
  with pytest.raises(ValueError, match="template"):
    cp.load(d)
  loaded = cp.load(d, template=_build(lambda: TwoBranchNet(nnx.Rngs(3)), seed=3))
  assert loaded.bn.scale.shape == (8,)
  _assert_same_outputs(model, loaded, x.shape)


def test_report_entry_and_eval_script(tmp_path):
  model, shape = _model("lenet5")
  x = jnp.zeros(shape)
  model.conv2.kernel[...] = model.conv2.kernel[...].at[..., :3].set(0.0)
  model.conv2.bias[...] = model.conv2.bias[...].at[:3].set(0.0)
  small, entry = cp.report(model, x, save_dir=str(tmp_path / "c"), name="lenet5")
  assert entry["layer_widths"]["conv2"] == [8, 5]
  assert entry["params_before"] - entry["params_after"] == 3 * (25 * 6 + 1) + 3 * 16 * 16
  assert entry["flops_before"] - entry["flops_after"] == 3 * (8 * 8 * 25 * 6) + 3 * 16 * 16
  # scripts/eval.py evaluates the saved model from its files and name.
  spec = importlib.util.spec_from_file_location("eval_script", os.path.join(REPO, "scripts",
                                                                           "eval.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  loaded = cp.load(entry["saved_to"])
  rng = np.random.default_rng(0)
  images = rng.normal(size=(50, 28, 28, 1)).astype(np.float32)
  logits = _outputs(model, jnp.asarray(images))
  labels = np.argmax(logits, -1)
  labels[:10] = (labels[:10] + 1) % 10
  res = mod.evaluate_arrays(loaded, images, labels, batch_size=16)
  assert res["accuracy"] == pytest.approx(0.8)
  ref = -jax.nn.log_softmax(logits)[np.arange(50), labels].mean()
  assert res["loss"] == pytest.approx(float(ref), rel=1e-4)


def test_eval_script_help_lists_its_flags():
  """Its positional-argument error says "see --help"; --help used to be an unknown flag."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "eval.py"), "--help"],
                        capture_output=True, text=True, timeout=120, check=False)
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]  # absl's --help exits with 1
  for flag in ("--model_dir", "--dataset", "--batch_size"):
    assert flag in proc.stdout


def test_docstring_example():
  results = doctest.testmod(cp, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert results.attempted >= 5 and results.failed == 0


def test_trainer_snippet(tmp_path):
  """The lines the trainer runs when ``config.compact`` is set (see docs/compaction.md)."""
  import json
  import optax
  from sparsejax import train

  model, shape = _model("lenet5", seed=4)
  model.conv1.kernel[...] = model.conv1.kernel[...].at[..., 1].set(0.0)
  model.conv1.bias[...] = model.conv1.bias[...].at[1].set(-0.5)  # relu(-0.5) = 0
  state, _, eval_def = train.create_train_state(model, optax.sgd(0.1))
  final_model = nnx.merge(eval_def, state.params, state.model_state)
  sample = jnp.zeros((1,) + shape[1:])
  small, entry = cp.report(final_model, sample, save_dir=str(tmp_path / "compacted"),
                           name="lenet5")
  json.dumps(entry)
  assert entry["layer_widths"]["conv1"] == [6, 5]
  assert entry["params_before"] - entry["params_after"] == 26 + 25 * 8
  small_def, small_params, small_rest = nnx.split(small, nnx.Param, ...)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16,) + shape[1:]), jnp.float32)
  batch = {"image": x, "label": jnp.arange(16) % 10}
  before = train.make_eval_step(eval_def)(state.params, state.model_state, batch)
  after = train.make_eval_step(small_def)(small_params, small_rest, batch)
  assert int(before["correct"]) == int(after["correct"])
  np.testing.assert_allclose(float(after["loss_sum"]), float(before["loss_sum"]), rtol=1e-5)
  meta = cp.read_metadata(entry["saved_to"])
  assert meta["extra"]["original_config"]["widths"] == [6, 8, 16]


class _ProductOfParams(nnx.Module):
  """A hidden layer read through the product of two parameters: x -> relu(A x) @ (U V)."""

  def __init__(self, rngs):
    self.a = nnx.Linear(4, 6, rngs=rngs)
    self.u = nnx.Param(jax.random.normal(rngs.params(), (6, 3)))
    self.v = nnx.Param(jax.random.normal(rngs.params(), (3, 5)))

  def __call__(self, x):
    return nnx.relu(self.a(x)) @ (self.u[...] @ self.v[...])


def test_matrix_product_of_two_parameters():
  # An input-independent dot_general (U @ V) used to crash the analysis.
  m = _ProductOfParams(nnx.Rngs(0))
  m.a.kernel[...] = m.a.kernel[...].at[:, 2].set(0.0)
  m.a.bias[...] = m.a.bias[...].at[2].set(0.0)  # hidden unit 2 is relu(0) = 0
  x = jax.random.normal(jax.random.key(3), (2, 4))
  small = cp.compact(m, x)
  assert small.a.kernel.shape == (4, 5) and small.u.shape == (5, 3) and small.v.shape == (3, 5)
  keep = [0, 1, 3, 4, 5]
  np.testing.assert_array_equal(small.u[...], np.asarray(m.u[...])[keep])
  np.testing.assert_allclose(small(x), m(x), rtol=1e-5, atol=1e-6)


def test_depthwise_conv_counted_and_compacted_as_grouped_on_every_backend():
  """DepthwiseConv runs as a dense diagonal conv on the CPU; the analysis must not see that."""
  from sparsejax.models import darts  # pylint: disable=import-outside-toplevel
  conv = darts.DepthwiseConv(8, 3, padding=1, rngs=nnx.Rngs(0))
  c = cp.count(conv, jnp.zeros((2, 6, 6, 8)))
  assert c.flops == 6 * 6 * 9 * 8 and c.params == 9 * 8  # not 6*6*9*8*8
  # A DilConv whose input channel 3 is zero everywhere: the depthwise filter of channel 3
  # and the pointwise row reading it go.
  dil = darts.DilConv(6, 5, 3, stride=1, padding=2, dilation=2,
                      norm=lambda f, rngs: nnx.BatchNorm(f, rngs=rngs), rngs=nnx.Rngs(1))

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.inp = nnx.Linear(4, 6, rngs=rngs)
      self.dil = dil

    def __call__(self, x):
      return self.dil(self.inp(x))

  net = Net(nnx.Rngs(2))
  net.inp.kernel[...] = net.inp.kernel[...].at[:, 3].set(0.0)
  net.inp.bias[...] = net.inp.bias[...].at[3].set(0.0)
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
  small = cp.compact(net, x)
  assert small.dil.depthwise.kernel.shape == (3, 3, 1, 5)
  assert small.dil.pointwise.kernel.shape[-2] == 5
  np.testing.assert_allclose(small(x), (lambda m: (m.eval(), m(x))[1])(net), rtol=1e-5, atol=1e-5)


def test_save_load_keeps_parameter_dtypes(tmp_path):
  m = models.get_model("lenet300_100", num_classes=10, rngs=nnx.Rngs(0))
  params = nnx.state(m, nnx.Param)
  nnx.update(m, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  cp.save(str(tmp_path / "m"), m, name="lenet300_100")
  loaded = cp.load(str(tmp_path / "m"))
  got = nnx.state(loaded, nnx.Param)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(nnx.state(m, nnx.Param))):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_overwrite_replaces_the_model_and_an_interrupted_one_leaves_no_metadata(tmp_path,
                                                                                 monkeypatch):
  """model.json is written last and removed first: an interrupted overwrite never pairs the
  old metadata with a new (or half-written) state."""
  d = str(tmp_path / "m")
  first = models.get_model("lenet300_100", num_classes=10, rngs=nnx.Rngs(0))
  second = models.get_model("lenet300_100", num_classes=10, rngs=nnx.Rngs(1))
  cp.save(d, first, name="lenet300_100")
  cp.save(d, second, name="lenet300_100", overwrite=True)
  got = jax.tree.leaves(nnx.state(cp.load(d), nnx.Param))
  for a, b in zip(got, jax.tree.leaves(nnx.state(second, nnx.Param))):
    np.testing.assert_array_equal(a, b)

  from sparsejax import checkpoint  # pylint: disable=import-outside-toplevel

  class Killed(Exception):
    pass

  def crash(*args, **kwargs):
    raise Killed("killed mid-save")
  monkeypatch.setattr(checkpoint.CheckpointManager, "save", crash)
  with pytest.raises(Killed):
    cp.save(d, first, name="lenet300_100", overwrite=True)
  with pytest.raises(FileNotFoundError, match="model.json not found"):
    cp.load(d)


def test_count_of_a_parameter_product_does_not_depend_on_the_batch():
  m = _ProductOfParams(nnx.Rngs(0))
  per_example = 4 * 6 + 6 * 5  # relu(A x) (4 -> 6), then the (6, 5) product applied to it
  once = 6 * 3 * 5  # U @ V, once per forward pass
  for batch in (1, 2, 4):
    c = cp.count(m, jnp.zeros((batch, 4)))
    assert c.flops == per_example + once, batch


# ---------------------------------------------------------------------------- review fixes


class _OuterGate(nnx.Module):
  """An activation x activation product with no contracted axis (einsum 'bi,bj->bij')."""

  def __init__(self, rngs):
    self.a, self.b = nnx.Linear(4, 3, rngs=rngs), nnx.Linear(4, 3, rngs=rngs)
    self.w = nnx.Param(jax.random.normal(jax.random.key(1), (3, 3, 2)))

  def __call__(self, x):
    h1 = nnx.relu(self.a(x) - 8.0)  # zero on small inputs: the output check alone misses it
    return jnp.einsum("bij,ijk->bk", jnp.einsum("bi,bj->bij", h1, self.b(x)), self.w[...])


def test_product_of_activations_without_contraction_is_not_zero():
  # Was treated as the constant 0 ("every contracted term is zero" over no terms): all of
  # a's and b's channels were removed and the model returned 0 for large inputs.
  m = _OuterGate(nnx.Rngs(0))
  small = cp.compact(m, jnp.zeros((2, 4)))
  assert small.a.kernel.shape == (4, 3) and small.b.kernel.shape == (4, 3)
  x = 10 * jax.random.normal(jax.random.key(3), (2, 4))
  np.testing.assert_allclose(_outputs(small, x), _outputs(m, x), rtol=1e-6)
  assert np.abs(_outputs(m, x)).max() > 1.0


class _Odd(nnx.Module):
  """bf16 conv + BN, nnx.remat, instance norm, LinearGeneral, Einsum and a
  NaN-guarded variance: each used to crash, miscount or keep a zero channel."""

  def __init__(self, rngs, dtype=jnp.float32):
    self.c1 = nnx.Conv(3, 6, (3, 3), param_dtype=dtype, dtype=dtype, rngs=rngs)
    self.c2 = nnx.Conv(6, 6, (3, 3), rngs=rngs)
    self.gn = nnx.GroupNorm(6, num_groups=6, rngs=rngs)  # instance norm
    self.lg = nnx.LinearGeneral(6, 5, rngs=rngs)
    self.es = nnx.Einsum("bi,io->bo", (5, 4), (4,), rngs=rngs)
    self.head = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.c1(x)).astype(jnp.float32)
    h = nnx.remat(lambda mod, y: nnx.relu(mod(y)))(self.c2, h)
    h = h / jnp.sqrt(jnp.var(h, axis=(1, 2), keepdims=True) + 1.0)  # jnp.var has a NaN fallback
    h = self.gn(h).mean(axis=(1, 2))
    return self.head(nnx.relu(self.es(nnx.relu(self.lg(h)))))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_remat_bf16_instance_norm_linear_general_einsum_compact_exactly(dtype):
  m = _Odd(nnx.Rngs(0), dtype)
  zero = lambda v, idx, axis: v.set_value(v.get_value().at[(slice(None),) * axis + (idx,)].set(0))  # noqa: E731
  zero(m.c1.kernel, 1, 3)
  zero(m.c1.bias, 1, 0)
  zero(m.c2.kernel, 4, 3)
  zero(m.c2.bias, 4, 0)
  zero(m.gn.scale, 2, 0)
  zero(m.gn.bias, 2, 0)
  zero(m.lg.kernel, 3, 1)
  zero(m.lg.bias, 3, 0)
  zero(m.es.kernel, 0, 1)
  zero(m.es.bias, 0, 0)
  x = jnp.zeros((2, 6, 6, 3))
  small = cp.compact(m, x)
  assert small.c1.kernel.shape == (3, 3, 3, 5) and small.c1.kernel.dtype == dtype
  assert small.c2.kernel.shape == (3, 3, 5, 4)  # c2's filter 4 and (via gn) channel 2
  assert small.gn.scale.shape == (4,) and small.gn.num_groups == 4
  assert small.lg.kernel.shape == (4, 4) and small.es.kernel.shape == (4, 3)
  xr = jax.random.normal(jax.random.key(0), (3, 6, 6, 3))
  np.testing.assert_allclose(_outputs(small, xr), _outputs(m, xr), rtol=1e-5, atol=1e-5)
  c = cp.count(m, x)
  assert c.flops == (6 * 6 * 9 * 3 * 6 + 6 * 6 * 9 * 6 * 6  # both convs (remat body counted)
                     + 6 * 5 + 5 * 4 + 4 * 2)


def test_count_transposed_conv_skips_the_inserted_zeros():
  # 8x8 -> 16x16, stride 2, 3x3, 4 -> 5: each of the 64 input pixels meets 9 taps, less
  # the taps SAME cropping drops (one row and one column of the 3x3 border: 23 = 8*3 - 1 per
  # axis); counting every output position x 9 taps gave 16*16*9*4*5 = 46,080.
  m = nnx.ConvTranspose(4, 5, (3, 3), strides=(2, 2), rngs=nnx.Rngs(0))
  assert cp.count(m, jnp.ones((2, 8, 8, 4))).flops == 23 * 23 * 4 * 5
  # An ordinary conv is unchanged: 3x3 outputs (stride 2) x 9 taps x 8 x 8.
  assert cp.count(nnx.Conv(8, 8, (3, 3), strides=2, rngs=nnx.Rngs(0)),
                  jnp.ones((2, 6, 6, 8))).flops == 3 * 3 * 9 * 8 * 8


class _ExclPadPool(nnx.Module):

  def __init__(self, rngs):
    self.c1, self.c2 = nnx.Conv(3, 6, (3, 3), rngs=rngs), nnx.Conv(6, 4, (3, 3), rngs=rngs)

  def __call__(self, x):
    h = nnx.avg_pool(nnx.relu(self.c1(x)), (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)  # divides by a count that differs at the border
    return self.c2(h)


def test_zero_channel_through_average_pool_without_padding_counts_is_removed():
  m = _ExclPadPool(nnx.Rngs(0))
  m.c1.kernel.set_value(m.c1.kernel.get_value().at[..., 1].set(0.0))
  m.c1.bias.set_value(m.c1.bias.get_value().at[1].set(0.0))
  small = cp.compact(m, jnp.ones((1, 6, 6, 3)))
  assert small.c1.kernel.shape[-1] == 5 and small.c2.kernel.shape[-2] == 5
  _assert_same_outputs(m, small, (2, 6, 6, 3))


class _Scanned(nnx.Module):

  def __init__(self, rngs):
    self.b = nnx.Linear(6, 6, rngs=rngs)

  def __call__(self, x):
    return jax.lax.scan(lambda h, _: (self.b(h), None), x, None, length=3)[0]


def test_count_charges_products_inside_scan_to_their_module():
  c = cp.count(_Scanned(nnx.Rngs(0)), jnp.ones((2, 6)))
  assert c.flops == 3 * 36
  assert {l.name: l.flops for l in c.layers} == {"b": 3 * 36}  # was under "dot@<file:line>"


class _SpyEmbed(nnx.Module):
  """Integer input (ids); records what it is called with."""

  def __init__(self, rngs):
    self.c = nnx.Linear(1, 3, rngs=rngs)
    self.seen = []

  def __call__(self, ids):
    self.seen.append(np.asarray(ids))
    return self.c(ids[:, None].astype(jnp.float32))


def test_output_check_redraws_integer_inputs_within_their_range():
  # The check's second trial used to repeat an integer sample (uint8 images, ids), so it ran
  # on one input only; it now redraws within the sample's range, keeping ids valid.
  from sparsejax.compact import _check_outputs  # pylint: disable=import-outside-toplevel
  m = _SpyEmbed(nnx.Rngs(0))
  ids = jnp.asarray([0, 3, 7, 2, 5, 5, 1, 4], jnp.int32)
  _check_outputs(m, m, ids, 1e-5, 1e-5)
  redrawn = [s for s in m.seen if not np.array_equal(s, np.asarray(ids))]
  assert redrawn and all(s.min() >= 0 and s.max() <= 7 and s.dtype == np.int32 for s in redrawn)


class _ScaleThenKernelFirst(nnx.Module):
  """A per-channel scale (not a kernel) on the activation, then a product with the kernel
  as the left operand (``W @ h``)."""

  def __init__(self, rngs):
    self.scale = nnx.Param(jnp.full((3,), 0.5))
    self.w = nnx.Linear(3, 4, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return (self.w.kernel[...].T @ (x * self.scale[...]).T).T


def test_count_charges_a_product_to_the_kernel_not_to_a_scale_of_the_activation():
  c = cp.count(_ScaleThenKernelFirst(nnx.Rngs(0)), jnp.ones((2, 3)))
  assert c.flops == 3 * 4
  # x * scale used to pass for a view of ``scale``, which took the product's 12 MACs.
  assert {l.name: l.flops for l in c.layers} == {"scale": 0, "w": 12}


_TRIL = np.tril(np.ones((6, 6), np.float32))


class _ScannedMaskedKernel(nnx.Module):
  """A masked kernel (``kernel * constant``) inside a scan body and inside a cond branch."""

  def __init__(self, rngs):
    self.b = nnx.Linear(6, 6, rngs=rngs)
    self.c = nnx.Linear(6, 6, rngs=rngs)

  def __call__(self, x):
    def body(h, _):
      k = self.b.kernel[...]
      return h @ (k * jax.lax.rsqrt(jnp.sum(k * k))), None  # weight-normalised kernel

    h = jax.lax.scan(body, x, None, length=3)[0]
    return jax.lax.cond(jnp.sum(h) > 0, lambda t: t @ (self.c.kernel[...] * _TRIL),
                        lambda t: t, h)


def test_count_charges_a_scaled_kernel_inside_scan_and_cond_to_its_module():
  # Every body operand used to count as input-dependent, so kernel * (a constant or a
  # kernel-derived scalar) lost the kernel's label and the product went to "dot@<file:line>".
  c = cp.count(_ScannedMaskedKernel(nnx.Rngs(0)), jnp.ones((2, 6)))
  assert {l.name: l.flops for l in c.layers} == {"b": 3 * 36, "c": 36}


class _LoopWithBranch(nnx.Module):

  def __init__(self, rngs):
    self.a = nnx.Linear(4, 4, rngs=rngs)

  def __call__(self, x):
    def body(carry):
      i, h = carry
      return i + 1, jax.lax.cond(i % 2 == 0, self.a, lambda t: t, h)

    return jax.lax.while_loop(lambda carry: carry[0] < 3, body, (0, x))[1]


def test_count_raises_for_a_product_in_a_branch_of_a_while_loop():
  # The dense layer sits in a cond inside the loop body: it was not seen, and the loop
  # counted as 0 multiply-adds instead of raising like a product directly in the body.
  with pytest.raises(ValueError, match="while loop.*trip count"):
    cp.count(_LoopWithBranch(nnx.Rngs(0)), jnp.ones((2, 4)))


def _bench_compact():
  spec = importlib.util.spec_from_file_location(
      "bench_compact", os.path.join(REPO, "scripts", "bench_compact.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_bench_global_gamma_pruning_removes_a_residual_group_only_when_all_its_scales_are_small():
  """scripts/bench_compact.py --method bn_scale: classic slimming's one global |gamma|
  threshold, where a residual-stream channel goes only if every BN scale on it is below."""
  model = models.get_model("resnet20", widths=(4, 8, 16), rngs=nnx.Rngs(0))
  for _, m in nnx.iter_graph(model):
    if isinstance(m, nnx.BatchNorm):
      m.scale[...] = jnp.ones_like(m.scale[...])
  model.blocks[0].bn1.scale[2] = 0.01  # an inner channel: one BN, the smallest score
  for b in (6, 7, 8):  # stream channel 12 (stage 3 only): all three of its BNs small
    model.blocks[b].bn2.scale[12] = 0.02
  model.stem.bn.scale[1] = 0.001  # stream channel 1: smallest in the stem, but 1.0 elsewhere
  x = jnp.zeros((1, 8, 8, 3))
  bench = _bench_compact()
  total = sum(bench._kernel_widths(model, x).values())  # pylint: disable=protected-access
  n, tau = bench.zero_by_bn_scale(model, x, 4 / total)  # 1 inner + 3 stream outputs
  assert (n, tau) == (2, pytest.approx(0.02))
  small = cp.compact(model, x)
  assert small.blocks[0].conv1.kernel.shape[-1] == 3  # block 0's inner width 4 -> 3
  assert tuple(small.config["widths"]) == (4, 8, 15)  # stage 3's stream 16 -> 15; channel 1 stays
  assert sum(bench._kernel_widths(small, x).values()) == total - 4  # pylint: disable=protected-access


def test_count_of_a_pallas_sparse_layer_warns_and_still_counts_parameters():
  """A Pallas kernel's body cannot be sized: count warns instead of refusing the whole
  model (eval.py and lowrank.export call it), and the XLA path is counted in full."""
  from sparsejax import nn as sparse_nn  # pylint: disable=import-outside-toplevel
  dense = nnx.Linear(16, 16, rngs=nnx.Rngs(0))
  mask = np.zeros((16, 16), bool)
  mask[:8, :8] = True  # one of four 8x8 blocks kept
  x = jnp.ones((2, 16))
  xla = sparse_nn.SparseLinear.from_dense(dense, mask, block_shape=(8, 8), impl="xla")
  pallas = sparse_nn.SparseLinear.from_dense(dense, mask, block_shape=(8, 8), impl="pallas")
  want = cp.count(xla, x)
  assert want.flops == 64  # the stored block only: 8 x 8 multiply-adds per example
  with pytest.warns(UserWarning, match="does not see inside the Pallas kernel"):
    got = cp.count(pallas, x)
  assert got.params == want.params and got.flops == 0
