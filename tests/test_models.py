"""Tests for sparsejax.models: exact parameter counts, numpy reference forwards,
batch-norm train/eval behaviour, option-A shortcuts, widths and the factory.

Large models are only built abstractly (``nnx.eval_shape``); the numerical
checks use tiny models so that the file runs in seconds on a CPU.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsejax import models
from sparsejax.models import (VGG, VGG_CONFIGS, BasicBlock, LeNet5, LeNet300100, ResNetCIFAR,
                              get_model, option_a_shortcut)
from sparsejax.tree import leaves_with_paths, path_str

EPS = 1e-5  # batch-norm epsilon used by the models
MOMENTUM = 0.9  # default running-average decay


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def _abstract_cached(name_or_cls, frozen_kwargs):
  kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in frozen_kwargs}
  if isinstance(name_or_cls, str):
    return nnx.eval_shape(lambda: get_model(name_or_cls, rngs=nnx.Rngs(0), **kwargs))
  return nnx.eval_shape(lambda: name_or_cls(rngs=nnx.Rngs(0), **kwargs))


def abstract(name_or_cls, **kwargs):
  """Builds a model without allocating or initialising its parameters (cached)."""
  frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
  return _abstract_cached(name_or_cls, frozen)


def param_shapes(model) -> dict[str, tuple[int, ...]]:
  return {p: tuple(x.shape) for p, x in leaves_with_paths(nnx.state(model, nnx.Param))}


def n_params(model) -> int:
  return sum(int(np.prod(s)) for s in param_shapes(model).values())


def np_conv(x, k, stride=1, pad=0):
  """Brute-force NHWC x HWIO cross-correlation with symmetric zero padding."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = k.shape[:2]
  ho = (x.shape[1] - kh) // stride + 1
  wo = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, k.shape[3]), np.float64)
  for n in range(x.shape[0]):
    for i in range(ho):
      for j in range(wo):
        patch = x[n, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
        out[n, i, j] = np.einsum("hwc,hwco->o", patch, k)
  return out


def np_pool(x, op):
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :].reshape(n, h // 2, 2, w // 2, 2, c)
  return op(x, axis=(2, 4))


def np_bn(x, bn, mean=None, var=None):
  """Normalises with the given statistics (batch statistics when None)."""
  if mean is None:
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  scale, bias = np.asarray(bn.scale[...]), np.asarray(bn.bias[...])
  return (x - mean) / np.sqrt(var + EPS) * scale + bias


def relu(x):
  return np.maximum(x, 0.0)


def random_model(cls, seed, **kwargs):
  """``cls(**kwargs)`` with every parameter and batch statistic drawn at random.

  The model is built abstractly and then filled from numpy, which skips the
  (slow to compile on CPU) initialisers; the init itself is tested separately.
  """
  model = nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0), **kwargs))
  rng = np.random.default_rng(seed)
  def fill(path, x):
    if path_str(path).endswith("var"):
      return jnp.asarray(rng.uniform(0.5, 2.0, x.shape), jnp.float32)
    return jnp.asarray(rng.normal(0.0, 0.5, x.shape), jnp.float32)
  state = nnx.state(model)
  nnx.replace_by_pure_dict(
      state, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state)))
  nnx.update(model, state)
  return model


def apply(model, x):
  return nnx.jit(lambda m, v: m(v))(model, jnp.asarray(x, jnp.float32))


# --------------------------------------------------------------------------- counts


def resnet_count(n, widths=(16, 32, 64), block_widths=None, c_in=3, k=10):
  """Hand count for option-A ResNets: bias-free 3x3 convs, 2 params per BN channel."""
  block_widths = block_widths or [widths[b // n] for b in range(3 * n)]
  total = 9 * c_in * widths[0] + 2 * widths[0]  # stem conv + BN
  prev = widths[0]
  for b in range(3 * n):
    inner, out = block_widths[b], widths[b // n]
    total += 9 * prev * inner + 2 * inner  # conv1 + bn1
    total += 9 * inner * out + 2 * out  # conv2 + bn2
    prev = out
  return total + widths[2] * k + k  # fc


VGG19_CONVS = [3 * 64, 64 * 64, 64 * 128, 128 * 128, 128 * 256, 256 * 256, 256 * 256,
               256 * 256, 256 * 512, 512 * 512, 512 * 512, 512 * 512, 512 * 512,
               512 * 512, 512 * 512, 512 * 512]

PARAM_COUNTS = [
    ("lenet300_100", {}, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
    ("lenet300_100", {}, 266_610),
    ("lenet5", {}, 5 * 5 * 1 * 20 + 20 + 5 * 5 * 20 * 50 + 50 + 800 * 500 + 500 + 500 * 10 + 10),
    ("lenet5", {}, 431_080),
    # LeNet-5 on 32x32x3: ((32 - 4) / 2 - 4) / 2 = 5, so fc1 sees 5 * 5 * 50.
    ("lenet5", dict(in_channels=3, input_size=32),
     5 * 5 * 3 * 20 + 20 + 5 * 5 * 20 * 50 + 50 + 5 * 5 * 50 * 500 + 500 + 500 * 10 + 10),
    ("resnet20", {}, 269_722),
    ("resnet20", {}, resnet_count(3)),
    ("resnet32", {}, 464_154),
    ("resnet32", {}, resnet_count(5)),
    ("resnet56", {}, resnet_count(9)),
    ("resnet110", {}, resnet_count(18)),
    # ResNet-20 written out stage by stage: stem; 6 convs 16->16; 16->32 then 5 convs
    # 32->32; 32->64 then 5 convs 64->64; BN 2 per channel; fc.
    ("resnet20", {}, (27 * 16 + 32) + (6 * 9 * 16 * 16 + 6 * 32)
     + (9 * 16 * 32 + 5 * 9 * 32 * 32 + 6 * 64) + (9 * 32 * 64 + 5 * 9 * 64 * 64 + 6 * 128)
     + 64 * 10 + 10),
    ("resnet20", dict(widths=(8, 12, 20), block_widths=[3, 5, 7, 2, 4, 6, 1, 9, 11]),
     resnet_count(3, (8, 12, 20), [3, 5, 7, 2, 4, 6, 1, 9, 11])),
    ("resnet20", dict(widths=(4, 4, 4), block_widths=[1] * 9, in_channels=1),
     9 * 1 * 4 + 8 + 9 * (9 * 4 * 1 + 2 + 9 * 1 * 4 + 8) + 4 * 10 + 10),
    # 3x3 conv 3->8 (no bias) + BN(8); M; conv 8->16 + BN(16); 8x8 -> M -> 4 -> avg 2 ->
    # 2x2x16 = 64 classifier inputs.
    ("vgg11", dict(widths=[8, "M", 16], input_size=8),
     9 * 3 * 8 + 2 * 8 + 9 * 8 * 16 + 2 * 16 + 64 * 10 + 10),
    ("vgg11", dict(widths=[8, "M", 16], input_size=8, batch_norm=False),
     9 * 3 * 8 + 8 + 9 * 8 * 16 + 16 + 64 * 10 + 10),
    ("vgg19", {}, 9 * sum(VGG19_CONVS) + 2 * (2 * 64 + 2 * 128 + 4 * 256 + 8 * 512)
     + 512 * 10 + 10),
    ("vgg19", {}, 20_035_018),  # "20.04M" in network slimming (Liu et al. 2017)
    ("vgg16", dict(num_classes=100),
     9 * (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 2 * 256 * 256 + 256 * 512
          + 5 * 512 * 512) + 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512) + 512 * 100 + 100),
]


@pytest.mark.parametrize("name,kwargs,expected", PARAM_COUNTS)
def test_param_counts(name, kwargs, expected):
  assert n_params(abstract(name, **kwargs)) == expected


def test_running_stats_are_not_params():
  model = abstract("resnet20")
  stats = {p: s.shape for p, s in leaves_with_paths(nnx.state(model, nnx.BatchStat))}
  bn_channels = 16 + 6 * 16 + 6 * 32 + 6 * 64
  assert sum(int(np.prod(s)) for s in stats.values()) == 2 * bn_channels
  assert all(p.endswith(("/mean", "/var")) for p in stats)
  assert "stem/bn/mean" in stats and "blocks/8/bn2/var" in stats


# --------------------------------------------------------------------------- shapes and paths


@pytest.mark.parametrize("name,input_shape", [
    ("lenet300_100", (2, 28, 28, 1)),
    ("lenet5", (2, 28, 28, 1)),
    ("vgg11", (2, 32, 32, 3)),
    ("vgg13", (2, 32, 32, 3)),
    ("vgg16", (2, 32, 32, 3)),
    ("vgg19", (2, 32, 32, 3)),
    ("resnet20", (2, 32, 32, 3)),
    ("resnet32", (2, 32, 32, 3)),
])  # resnet56/110 share resnet20's code; only their counts are checked (tracing is slow)
def test_output_shapes(name, input_shape):
  out = nnx.eval_shape(
      lambda: get_model(name, num_classes=7, rngs=nnx.Rngs(0))(jnp.zeros(input_shape)))
  assert out.shape == (2, 7) and out.dtype == jnp.float32


@pytest.mark.parametrize("name,kwargs,input_shape", [
    ("lenet5", dict(in_channels=3, input_size=32), (3, 32, 32, 3)),
    ("lenet5", dict(input_size=(20, 24)), (3, 20, 24, 1)),
    ("vgg11", dict(in_channels=1, input_size=64), (3, 64, 64, 1)),
    ("resnet20", dict(in_channels=1), (3, 28, 28, 1)),
    ("lenet300_100", dict(in_features=32 * 32 * 3), (3, 32, 32, 3)),
])
def test_output_shapes_other_inputs(name, kwargs, input_shape):
  out = nnx.eval_shape(
      lambda: get_model(name, num_classes=5, rngs=nnx.Rngs(0), **kwargs)(jnp.zeros(input_shape)))
  assert out.shape == (3, 5)


def test_param_paths():
  assert set(param_shapes(abstract("lenet300_100"))) == {
      f"fc{i}/{w}" for i in (1, 2, 3) for w in ("kernel", "bias")}
  assert param_shapes(abstract("lenet5")) == {
      "conv1/kernel": (5, 5, 1, 20), "conv1/bias": (20,),
      "conv2/kernel": (5, 5, 20, 50), "conv2/bias": (50,),
      "fc1/kernel": (800, 500), "fc1/bias": (500,),
      "fc2/kernel": (500, 10), "fc2/bias": (10,)}
  vgg = param_shapes(abstract("vgg11"))
  assert vgg["features/0/conv/kernel"] == (3, 3, 3, 64)
  assert vgg["features/7/conv/kernel"] == (3, 3, 512, 512)
  assert vgg["features/7/bn/scale"] == (512,)
  assert vgg["classifier/kernel"] == (512, 10)
  assert not any(p.endswith("conv/bias") for p in vgg)
  assert len([p for p in vgg if p.endswith("conv/kernel")]) == 8
  res = param_shapes(abstract("resnet20"))
  assert res["stem/conv/kernel"] == (3, 3, 3, 16)
  assert res["blocks/3/conv1/kernel"] == (3, 3, 16, 32)
  assert res["blocks/3/conv2/kernel"] == (3, 3, 32, 32)
  assert res["blocks/8/bn2/bias"] == (64,)
  assert res["fc/kernel"] == (64, 10)
  assert not any(p.endswith("conv/bias") or "conv1/bias" in p or "conv2/bias" in p for p in res)


# --------------------------------------------------------------------------- custom widths


def test_resnet_custom_widths_shapes():
  widths, bw = (8, 12, 20), [3, 5, 7, 2, 4, 6, 1, 9, 11]
  shapes = param_shapes(abstract("resnet20", widths=widths, block_widths=bw, in_channels=2))
  assert shapes["stem/conv/kernel"] == (3, 3, 2, 8)
  prev = 8
  for b in range(9):
    out = widths[b // 3]
    assert shapes[f"blocks/{b}/conv1/kernel"] == (3, 3, prev, bw[b])
    assert shapes[f"blocks/{b}/bn1/scale"] == (bw[b],)
    assert shapes[f"blocks/{b}/conv2/kernel"] == (3, 3, bw[b], out)
    assert shapes[f"blocks/{b}/bn2/scale"] == (out,)
    prev = out
  assert shapes["fc/kernel"] == (20, 10)


def test_vgg_and_lenet_custom_widths_shapes():
  vgg = param_shapes(abstract("vgg19", widths=[5, 6, "M", 7, "M", 9], input_size=16))
  assert [vgg[f"features/{i}/conv/kernel"] for i in range(4)] == [
      (3, 3, 3, 5), (3, 3, 5, 6), (3, 3, 6, 7), (3, 3, 7, 9)]
  assert vgg["classifier/kernel"] == (2 * 2 * 9, 10)  # 16 -> 8 -> 4 -> avg 2
  lenet5 = param_shapes(abstract("lenet5", widths=(6, 16, 120)))
  assert lenet5["conv2/kernel"] == (5, 5, 6, 16)
  assert lenet5["fc1/kernel"] == (4 * 4 * 16, 120)
  assert lenet5["fc2/kernel"] == (120, 10)
  mlp = param_shapes(abstract("lenet300_100", widths=(17, 3)))
  assert (mlp["fc1/kernel"], mlp["fc2/kernel"], mlp["fc3/kernel"]) == ((784, 17), (17, 3), (3, 10))


# The config round trip does not depend on size: the 20-cell DARTS network takes ~20 s to trace.
_SMALL = {"darts_eval": dict(num_cells=5, widths=[8, 16, 32])}


@pytest.mark.parametrize("name", models.MODELS)
def test_config_rebuilds_same_model(name):
  model = abstract(name, **_SMALL.get(name, {}))  # cached: shared with test_param_counts
  cfg = model.config
  assert "rngs" not in cfg and cfg["num_classes"] == 10
  json.dumps(cfg)  # plain python values only
  rebuilt = abstract(type(model), **cfg)
  assert param_shapes(rebuilt) == param_shapes(model)
  cfg["num_classes"] = 99  # the returned dict is a copy
  cfg["widths"][0] = 1
  assert model.config["num_classes"] == 10 and model.config["widths"][0] != 1


def test_config_edit_builds_compacted_model():
  model = abstract("resnet20")
  cfg = model.config
  cfg["block_widths"] = [4] * 9
  cfg["widths"] = [8, 16, 32]
  small = abstract(ResNetCIFAR, **cfg)
  assert param_shapes(small)["blocks/4/conv1/kernel"] == (3, 3, 16, 4)
  assert n_params(small) == resnet_count(3, (8, 16, 32), [4] * 9)
  assert small.config["block_widths"] == [4] * 9
  vgg = abstract("vgg13")
  cfg = vgg.config
  cfg["widths"] = [w if w == "M" else w // 4 for w in cfg["widths"]]
  assert param_shapes(abstract(VGG, **cfg))["classifier/kernel"] == (128, 10)


# --------------------------------------------------------------------------- numerics


def test_lenet300100_matches_numpy():
  model = random_model(LeNet300100, 1, widths=(6, 4), num_classes=3, in_features=12)
  x = np.random.default_rng(2).normal(size=(5, 2, 3, 2)).astype(np.float32)
  p = {k: np.asarray(v, np.float64) for k, v in
       leaves_with_paths(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}
  h = relu(x.reshape(5, 12) @ p["fc1/kernel"] + p["fc1/bias"])
  h = relu(h @ p["fc2/kernel"] + p["fc2/bias"])
  ref = h @ p["fc3/kernel"] + p["fc3/bias"]
  np.testing.assert_allclose(apply(model, x), ref, rtol=1e-4, atol=1e-4)


def test_lenet5_matches_numpy():
  # 18x20 input: 5x5 VALID -> 14x16, pool -> 7x8, 5x5 VALID -> 3x4, pool -> 1x2 (floor).
  model = random_model(LeNet5, 3, widths=(3, 4, 5), num_classes=2, in_channels=2,
                       input_size=(18, 20))
  assert param_shapes(model)["fc1/kernel"] == (1 * 2 * 4, 5)
  x = np.random.default_rng(4).normal(size=(2, 18, 20, 2)).astype(np.float32)
  p = {k: np.asarray(v, np.float64) for k, v in
       leaves_with_paths(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}
  h = np_pool(relu(np_conv(x, p["conv1/kernel"]) + p["conv1/bias"]), np.max)
  h = np_pool(relu(np_conv(h, p["conv2/kernel"]) + p["conv2/bias"]), np.max)
  h = relu(h.reshape(2, -1) @ p["fc1/kernel"] + p["fc1/bias"])
  ref = h @ p["fc2/kernel"] + p["fc2/bias"]
  np.testing.assert_allclose(apply(model, x), ref, rtol=1e-4, atol=1e-4)


def _np_vgg(model, x, use_batch_stats):
  """Numpy forward of VGG(widths=[3, "M", 4]) with batch or running statistics."""
  f0, f1 = model.features
  def layer(h, f):
    h = np_conv(h, np.asarray(f.conv.kernel[...], np.float64), pad=1)
    if use_batch_stats:
      return relu(np_bn(h, f.bn))
    return relu(np_bn(h, f.bn, np.asarray(f.bn.mean[...]), np.asarray(f.bn.var[...])))
  h = np_pool(layer(x, f0), np.max)
  h = np_pool(layer(h, f1), np.mean)
  k, b = np.asarray(model.classifier.kernel[...]), np.asarray(model.classifier.bias[...])
  return h.reshape(h.shape[0], -1) @ k + b, h


def test_vgg_batchnorm_train_vs_eval():
  # random running statistics, scales and shifts
  model = random_model(VGG, 5, widths=[3, "M", 4], num_classes=2, input_size=8)
  x = np.random.default_rng(6).normal(1.0, 2.0, size=(4, 8, 8, 3)).astype(np.float32)
  old_mean = [np.asarray(f.bn.mean[...]) for f in model.features]
  old_var = [np.asarray(f.bn.var[...]) for f in model.features]

  model.eval()
  ref_eval, _ = _np_vgg(model, x, use_batch_stats=False)
  out_eval = apply(model, x)
  np.testing.assert_allclose(out_eval, ref_eval, rtol=1e-4, atol=1e-4)
  for f, m, v in zip(model.features, old_mean, old_var):  # eval leaves statistics alone
    np.testing.assert_array_equal(f.bn.mean[...], m)
    np.testing.assert_array_equal(f.bn.var[...], v)

  model.train()
  ref_train, _ = _np_vgg(model, x, use_batch_stats=True)
  out_train = apply(model, x)
  np.testing.assert_allclose(out_train, ref_train, rtol=1e-4, atol=1e-4)
  assert np.abs(ref_train - ref_eval).max() > 1e-2  # the two modes really differ

  # Running averages: new = 0.9 * old + 0.1 * batch statistic (biased variance).
  h = np_conv(x.astype(np.float64), np.asarray(model.features[0].conv.kernel[...]), pad=1)
  bn0 = model.features[0].bn
  np.testing.assert_allclose(
      bn0.mean[...], MOMENTUM * old_mean[0] + (1 - MOMENTUM) * h.mean(axis=(0, 1, 2)),
      rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      bn0.var[...], MOMENTUM * old_var[0] + (1 - MOMENTUM) * h.var(axis=(0, 1, 2)),
      rtol=1e-4, atol=1e-5)


def test_vgg_without_batchnorm_uses_conv_bias():
  model = random_model(VGG, 7, widths=[3, "M", 4], num_classes=2, input_size=8,
                       batch_norm=False)
  assert all(f.bn is None for f in model.features)
  x = np.random.default_rng(8).normal(size=(2, 8, 8, 3)).astype(np.float32)
  h = x.astype(np.float64)
  for f, pool in zip(model.features, (np.max, np.mean)):
    k, b = np.asarray(f.conv.kernel[...], np.float64), np.asarray(f.conv.bias[...])
    h = np_pool(relu(np_conv(h, k, pad=1) + b), pool)
  ref = h.reshape(2, -1) @ np.asarray(model.classifier.kernel[...]) + np.asarray(
      model.classifier.bias[...])
  np.testing.assert_allclose(apply(model, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,out_features,stride", [
    ((2, 6, 6, 3), 5, 2), ((2, 5, 7, 3), 3, 2), ((1, 4, 4, 2), 6, 1), ((1, 4, 4, 2), 2, 1)])
def test_option_a_shortcut(shape, out_features, stride):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  out = np.asarray(option_a_shortcut(jnp.asarray(x), out_features, stride))
  ho, wo = -(-shape[1] // stride), -(-shape[2] // stride)
  assert out.shape == (shape[0], ho, wo, out_features)
  for i in range(ho):
    for j in range(wo):
      np.testing.assert_array_equal(out[:, i, j, :shape[3]], x[:, stride * i, stride * j, :])
  np.testing.assert_array_equal(out[..., shape[3]:], 0.0)


@pytest.mark.parametrize("in_f,inner,out_f,stride", [(3, 5, 6, 2), (4, 2, 4, 1)])
def test_block_with_zero_conv2_is_relu_of_shortcut(in_f, inner, out_f, stride):
  block = random_model(BasicBlock, 9, in_features=in_f, inner_features=inner,
                       out_features=out_f, stride=stride)
  block.conv2.kernel[...] = jnp.zeros_like(block.conv2.kernel[...])
  block.bn2.bias[...] = jnp.zeros_like(block.bn2.bias[...])
  block.bn2.mean[...] = jnp.zeros_like(block.bn2.mean[...])
  x = np.random.default_rng(10).normal(size=(2, 6, 6, in_f)).astype(np.float32)
  sc = x[:, ::stride, ::stride, :]
  sc = np.concatenate([sc, np.zeros(sc.shape[:3] + (out_f - in_f,), np.float32)], axis=-1)
  # bn2 sees an all-zero input: in eval mode (x - 0) / sqrt(var + eps) = 0, in train
  # mode the batch mean and variance are 0 as well, so the block is relu(shortcut).
  for mode in ("eval", "train"):
    getattr(block, mode)()
    out = np.asarray(apply(block, x))
    np.testing.assert_allclose(out, relu(sc), atol=1e-5, err_msg=mode)
  assert (out == 0).mean() > 0.3  # the relu after the add is active


def test_basic_block_matches_numpy():
  # Padding 1 on both sides (PyTorch convention): with stride 2 output pixel i is
  # centred on input pixel 2i, the pixel the option-A shortcut keeps.
  block = random_model(BasicBlock, 11, in_features=3, inner_features=4, out_features=5,
                       stride=2)
  x = np.random.default_rng(12).normal(size=(3, 6, 6, 3)).astype(np.float64)
  k1, k2 = (np.asarray(c.kernel[...], np.float64) for c in (block.conv1, block.conv2))
  h = relu(np_bn(np_conv(x, k1, stride=2, pad=1), block.bn1))
  h = np_bn(np_conv(h, k2, pad=1), block.bn2)
  sc = np.concatenate([x[:, ::2, ::2, :], np.zeros((3, 3, 3, 2))], axis=-1)
  ref = relu(h + sc)
  np.testing.assert_allclose(apply(block, x), ref, rtol=1e-4, atol=1e-4)


def test_resnet_forward_matches_blocks():
  model = random_model(ResNetCIFAR, 13, depth=8, widths=(3, 5, 5), block_widths=[2, 4, 3],
                       num_classes=2, in_channels=2)
  model.eval()
  x = np.random.default_rng(14).normal(size=(2, 6, 6, 2)).astype(np.float64)
  stem = model.stem
  h = relu(np_bn(np_conv(x, np.asarray(stem.conv.kernel[...], np.float64), pad=1), stem.bn,
                 np.asarray(stem.bn.mean[...]), np.asarray(stem.bn.var[...])))
  for b, block in enumerate(model.blocks):
    stride = 2 if b > 0 else 1  # n = 1: every block after the first starts a stage
    assert block.stride == stride
    bn1, bn2 = block.bn1, block.bn2
    y = np_conv(h, np.asarray(block.conv1.kernel[...], np.float64), stride=stride, pad=1)
    y = relu(np_bn(y, bn1, np.asarray(bn1.mean[...]), np.asarray(bn1.var[...])))
    y = np_conv(y, np.asarray(block.conv2.kernel[...], np.float64), pad=1)
    y = np_bn(y, bn2, np.asarray(bn2.mean[...]), np.asarray(bn2.var[...]))
    sc = h[:, ::stride, ::stride, :]
    sc = np.concatenate([sc, np.zeros(sc.shape[:3] + (y.shape[-1] - sc.shape[-1],))], -1)
    h = relu(y + sc)
  ref = h.mean(axis=(1, 2)) @ np.asarray(model.fc.kernel[...]) + np.asarray(model.fc.bias[...])
  np.testing.assert_allclose(apply(model, x), ref, rtol=1e-4, atol=1e-4)


def test_conv_init_is_kaiming_normal_fan_out():
  block = BasicBlock(16, 32, 32, rngs=nnx.Rngs(0))
  k = np.asarray(block.conv1.kernel[...])  # (3, 3, 16, 32): fan_out = 9 * 32
  assert abs(k.std() / np.sqrt(2.0 / (9 * 32)) - 1) < 0.05
  assert abs(k.mean()) < 0.05 * k.std()
  assert np.abs(k).max() > 2.5 * k.std()  # untruncated normal has tails beyond 2 std
  np.testing.assert_array_equal(block.bn1.scale[...], 1.0)
  np.testing.assert_array_equal(block.bn1.bias[...], 0.0)


# --------------------------------------------------------------------------- errors


def test_unknown_name():
  with pytest.raises(ValueError, match=r"name must be one of .*resnet20.*got 'resnet18'"):
    get_model("resnet18", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("cls,kwargs,match", [
    (ResNetCIFAR, dict(depth=18), r"depth must be 6n \+ 2.*got 18"),
    (ResNetCIFAR, dict(depth=2), r"depth must be 6n \+ 2.*got 2"),
    (ResNetCIFAR, dict(widths=(16, 32)), r"widths must have length 3"),
    (ResNetCIFAR, dict(widths=(16, 8, 64)), r"widths must be non-decreasing"),
    (ResNetCIFAR, dict(block_widths=[16] * 8), r"block_widths must have length 9"),
    (ResNetCIFAR, dict(block_widths=[16] * 8 + [0]), r"block_widths\[8\] must be a positive int"),
    (ResNetCIFAR, dict(bn_momentum=1.0), r"bn_momentum must be a float in \[0, 1\)"),
    (VGG, dict(widths=[8, "A", 16]), r'widths\[1\] must be a positive int or "M"'),
    (VGG, dict(widths=["M"]), r"at least one conv width"),
    (VGG, dict(widths=[8, "M", 8, "M"], input_size=4), r"input_size=4 is too small"),
    (VGG, dict(batch_norm=1), r"batch_norm must be a bool"),
    (LeNet5, dict(input_size=15), r"input_size=15 is too small"),
    (LeNet5, dict(widths=(20, 50)), r"widths must have length 3"),
    (LeNet300100, dict(widths=(300, 0)), r"widths\[1\] must be a positive int, got 0"),
    (LeNet300100, dict(num_classes=True), r"num_classes must be a positive int"),
])
def test_constructor_errors(cls, kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    cls(rngs=nnx.Rngs(0), **kwargs)


def test_get_model_depth_conflict_and_forwarding():
  with pytest.raises(ValueError, match=r"depth=32 contradicts the model name 'resnet20'"):
    get_model("resnet20", depth=32, rngs=nnx.Rngs(0))
  assert abstract("resnet56").config["depth"] == 56
  assert abstract("resnet20", depth=20).config["depth"] == 20
  assert abstract("vgg16").config["widths"] == list(VGG_CONFIGS["vgg16"])
  assert abstract("vgg16", widths=[4, "M", 4], input_size=8).config["widths"] == [4, "M", 4]
  assert VGG_CONFIGS["vgg19"][-1] == 512 and VGG_CONFIGS["vgg19"].count("M") == 4


@pytest.mark.parametrize("name,bad_shape,match", [
    ("lenet5", (2, 32, 32, 1), r"x must have shape \(batch, 28, 28, 1\)"),
    ("vgg11", (2, 32, 32, 1), r"x must have shape \(batch, 32, 32, 3\)"),
    ("resnet20", (2, 32, 32, 1), r"x must have shape \(batch, height, width, 3\)"),
    ("lenet300_100", (2, 32, 32, 1), r"x must have 784 features"),
])
def test_wrong_input_shape(name, bad_shape, match):
  with pytest.raises(ValueError, match=match):
    nnx.eval_shape(lambda: get_model(name, rngs=nnx.Rngs(0))(jnp.zeros(bad_shape)))
