"""Low-rank export: factors, factored layers equal the low-rank conv, whole-model decomposition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsejax import lowrank, models
from sparsejax import tree as tree_lib
from sparsejax.optim import trp

SCHEMES = ("channel", "spatial")


def _rng(seed=0):
  return np.random.default_rng(seed)


def _rank_r_kernel(shape, rank, scheme, seed=0):
  """A float32 kernel whose ``scheme`` matrix has rank ``rank`` (singular values ~1..3)."""
  rows, cols = trp.matrix_shape(shape, scheme)
  r = _rng(seed)
  u, _ = np.linalg.qr(r.normal(size=(rows, rank)))
  v, _ = np.linalg.qr(r.normal(size=(cols, rank)))
  m = (u * np.linspace(3.0, 1.0, rank)) @ v.T
  return np.asarray(trp.from_matrix(jnp.asarray(m, jnp.float32), shape, scheme))


def _conv(in_f, out_f, kernel, **kw):
  conv = nnx.Conv(in_f, out_f, tuple(kernel.shape[:-2]), rngs=nnx.Rngs(0), **kw)
  conv.kernel[...] = jnp.asarray(kernel)
  if conv.bias is not None:
    conv.bias[...] = jnp.asarray(_rng(1).normal(size=(out_f,)), jnp.float32)
  return conv


@pytest.mark.parametrize("scheme", SCHEMES)
def test_conv_factors_reconstruct_and_truncate(scheme):
  shape = (3, 3, 6, 8)
  k = _rank_r_kernel(shape, 4, scheme)
  f1, f2 = lowrank.conv_factors(k, 4, scheme)
  if scheme == "channel":
    assert f1.shape == (3, 3, 6, 4) and f2.shape == (1, 1, 4, 8)
    rec = np.einsum("hwci,in->hwcn", f1, f2[0, 0])
    # sqrt(sigma) split: both factors have the same singular values.
    s1 = np.linalg.svd(f1.reshape(-1, 4), compute_uv=False)
    s2 = np.linalg.svd(f2[0, 0], compute_uv=False)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
  else:
    assert f1.shape == (3, 1, 6, 4) and f2.shape == (1, 3, 4, 8)
    rec = np.einsum("hci,win->hwcn", f1[:, 0], f2[0])
    # sigma in the second factor: the first has orthonormal columns.
    g = f1[:, 0].transpose(1, 0, 2).reshape(-1, 4)
    np.testing.assert_allclose(g.T @ g, np.eye(4), atol=1e-6)
  np.testing.assert_allclose(rec, k, atol=1e-5)
  # A lower rank gives the Eckart-Young truncation of the scheme matrix.
  g1, g2 = lowrank.conv_factors(k, 2, scheme)
  rec2 = (np.einsum("hwci,in->hwcn", g1, g2[0, 0]) if scheme == "channel"
          else np.einsum("hci,win->hwcn", g1[:, 0], g2[0]))
  m = np.asarray(trp.to_matrix(jnp.asarray(k), scheme), np.float64)
  u, s, vt = np.linalg.svd(m, full_matrices=False)
  want = (u[:, :2] * s[:2]) @ vt[:2]
  np.testing.assert_allclose(np.asarray(trp.to_matrix(jnp.asarray(rec2, jnp.float32), scheme)),
                             want, atol=1e-5)


_CONV_CASES = [
    dict(strides=1, padding="SAME"),
    dict(strides=2, padding="SAME"),
    dict(strides=(2, 1), padding="VALID"),
    dict(strides=(1, 2), padding=1),
    dict(strides=2, padding=((1, 1), (1, 1))),   # the ResNet's stride-2 conv
    dict(strides=1, padding=((2, 0), (0, 1)), kernel_dilation=(1, 2)),
    dict(strides=2, padding="SAME", kernel_dilation=2),
    dict(strides=1, padding="CIRCULAR"),
]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", range(len(_CONV_CASES)))
@pytest.mark.parametrize("size", [(9, 9), (10, 7)])
def test_factored_conv_equals_the_low_rank_conv(scheme, case, size):
  kw = dict(_CONV_CASES[case])
  use_bias = case % 2 == 0
  k = _rank_r_kernel((3, 3, 6, 8), 3, scheme, seed=case)
  conv = _conv(6, 8, k, use_bias=use_bias, **kw)
  low = lowrank.LowRankConv.from_conv(conv, scheme=scheme, cut=1e-3)
  assert low.rank == 3 and low.full_rank == min(trp.matrix_shape((3, 3, 6, 8), scheme))
  x = jnp.asarray(_rng(2).normal(size=(2, *size, 6)), jnp.float32)
  want = conv(x)
  got = low(x)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(lowrank.reconstruct(low)), k, atol=1e-5)


def test_energy_and_rank_choice_and_zero_rank():
  s = np.array([4.0, 2.0, 1.0, 0.5])
  assert lowrank.choose_rank(s, cut=1.0) == 3
  assert lowrank.choose_rank(s, cut=0.05) == 4
  assert lowrank.choose_rank(s, energy=0.9) == 2  # 16/21.25 < 0.9 <= 20/21.25
  assert lowrank.choose_rank(s, rank=1) == 1
  k = _rank_r_kernel((3, 3, 6, 8), 3, "channel") * 1e-3  # every value below the cut
  conv = _conv(6, 8, k, use_bias=True)
  low = lowrank.LowRankConv.from_conv(conv, cut=0.05)
  assert low.rank == 1
  x = jnp.ones((1, 5, 5, 6))
  np.testing.assert_allclose(np.asarray(low(x)), np.broadcast_to(np.asarray(conv.bias[...]),
                                                                  (1, 5, 5, 8)), atol=1e-7)


def test_factored_linear():
  r = _rng(3)
  w = (r.normal(size=(20, 3)) @ r.normal(size=(3, 12))).astype(np.float32)
  lin = nnx.Linear(20, 12, rngs=nnx.Rngs(0))
  lin.kernel[...] = jnp.asarray(w)
  lin.bias[...] = jnp.asarray(r.normal(size=12), jnp.float32)
  low = lowrank.LowRankLinear.from_linear(lin, cut=1e-3)
  assert low.rank == 3 and low.first.kernel.shape == (20, 3)
  x = jnp.asarray(r.normal(size=(4, 20)), jnp.float32)
  np.testing.assert_allclose(np.asarray(low(x)), np.asarray(lin(x)), atol=1e-4)


def _low_rank_resnet(scheme, energy=0.6):
  model = models.get_model("resnet20", widths=(8, 16, 16), rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  low, ranks = jax.jit(lambda p: trp.low_rank_params(p, energy=energy, scheme=scheme))(params)
  nnx.update(model, low)
  # Non-trivial batch-norm statistics, so that eval mode is checked too.
  r = _rng(4)
  for _, var in nnx.iter_graph(model):
    if isinstance(var, nnx.BatchNorm):
      var.mean[...] = jnp.asarray(r.normal(size=var.mean.shape) * 0.1, jnp.float32)
      var.var[...] = jnp.asarray(r.uniform(0.5, 1.5, size=var.var.shape), jnp.float32)
  model.eval()
  ranks = {p[:-len("/kernel")]: int(v) for p, v in tree_lib.leaves_with_paths(ranks)
           if v is not None}
  return model, ranks


@pytest.mark.parametrize("scheme", SCHEMES)
def test_decompose_resnet_equals_the_low_rank_model(scheme):
  model, ranks = _low_rank_resnet(scheme)
  stem_before = np.asarray(model.stem.conv.kernel[...])
  x = jnp.asarray(_rng(5).normal(size=(2, 32, 32, 3)), jnp.float32)
  new, rep = lowrank.export(model, x, scheme=scheme, cut=1e-3)
  layers = lowrank.factored_layers(new)
  # Every 3x3 conv but the stem, stride-2 ones (blocks 3 and 6 conv1) included.
  assert set(layers) == set(ranks) and "stem/conv" not in layers
  assert isinstance(new.blocks[3].conv1, lowrank.LowRankConv)
  assert new.blocks[3].conv1.first.strides == ((2, 2) if scheme == "channel" else (2, 1))
  for name, layer in layers.items():
    assert layer.rank == ranks[name], name
  assert isinstance(model.blocks[0].conv1, nnx.Conv)  # the original is untouched
  np.testing.assert_array_equal(np.asarray(new.stem.conv.kernel[...]), stem_before)
  np.testing.assert_allclose(np.asarray(new(x)), np.asarray(model(x)), atol=1e-4, rtol=1e-4)
  assert rep["max_abs_diff_vs_low_rank"] < 1e-4
  # Counts against closed forms: parameters and conv multiply-adds per example.
  dense_params = sum(int(np.prod(n.kernel.shape)) for p, n in nnx.iter_graph(model)
                     if isinstance(n, nnx.Conv) and "/".join(map(str, p)) in layers)
  fac_params = sum(l.rank * sum(trp.matrix_shape(model_kernel_shape(model, name), scheme))
                   for name, l in layers.items())
  assert rep["params_before"] - rep["params_after"] == dense_params - fac_params
  want_flops = 0
  for name, l in layers.items():
    kh, kw, c, n = model_kernel_shape(model, name)
    stride = 2 if name in ("blocks/3/conv1", "blocks/6/conv1") else 1
    in_hw = {0: 32, 1: 16, 2: 8}[int(name.split("/")[1]) // 3]
    in_hw = in_hw * stride
    out_hw = in_hw // stride
    dense = out_hw * out_hw * kh * kw * c * n
    if scheme == "channel":
      fac = out_hw * out_hw * l.rank * (kh * kw * c + n)
    else:  # the k x 1 factor keeps the full input width
      fac = out_hw * in_hw * kh * c * l.rank + out_hw * out_hw * kw * l.rank * n
    want_flops += dense - fac
  assert rep["conv_flops_before"] - rep["conv_flops_after"] == want_flops
  assert rep["flops_before"] - rep["flops_after"] == want_flops  # the fc is not factored


def model_kernel_shape(model, name):
  node = model
  for k in name.split("/"):
    node = node[int(k)] if k.isdigit() else getattr(node, k)
  return tuple(node.kernel.shape)


def test_decompose_options():
  model, ranks = _low_rank_resnet("channel")
  kept = lowrank.decompose(model, cut=1e-3, strided=False)
  assert isinstance(kept.blocks[3].conv1, nnx.Conv) and isinstance(kept.blocks[6].conv1, nnx.Conv)
  assert isinstance(kept.blocks[4].conv1, lowrank.LowRankConv)
  # A full-rank layer is not worth factoring: kept dense unless asked.
  full = models.get_model("resnet20", widths=(8, 16, 16), rngs=nnx.Rngs(1))
  assert lowrank.factored_layers(lowrank.decompose(full, cut=0.0)) == {}
  forced = lowrank.decompose(full, cut=0.0, only_if_smaller=False)
  assert len(lowrank.factored_layers(forced)) == 18
  # energy instead of cut; include_dense factors the fc (here at a rank that saves nothing).
  with_fc = lowrank.decompose(model, energy=0.5, include_dense=True, only_if_smaller=False)
  assert isinstance(with_fc.fc, lowrank.LowRankLinear)
  # Decomposing twice leaves the factored layers alone.
  again = lowrank.decompose(lowrank.decompose(model, cut=1e-3), cut=1e-3)
  assert set(lowrank.factored_layers(again)) == set(ranks)
  # The lossless options still compute the model's function (the forced one at full rank;
  # energy=0.5 above truncates further, so with_fc is not one of them).
  x = jnp.asarray(_rng(5).normal(size=(2, 32, 32, 3)), jnp.float32)
  want = np.asarray(model(x))
  for other in (kept, again):
    np.testing.assert_allclose(np.asarray(other(x)), want, atol=1e-4, rtol=1e-4)
  full.eval()
  forced.eval()
  np.testing.assert_allclose(np.asarray(forced(x)), np.asarray(full(x)), atol=1e-4, rtol=1e-4)


def test_bad_arguments():
  conv = _conv(6, 8, _rank_r_kernel((3, 3, 6, 8), 2, "channel"), use_bias=False)
  with pytest.raises(ValueError, match="exactly one of rank, cut and energy"):
    lowrank.LowRankConv.from_conv(conv, cut=0.1, energy=0.5)
  with pytest.raises(ValueError, match="scheme must be one of"):
    lowrank.LowRankConv.from_conv(conv, scheme="row", rank=1)
  with pytest.raises(ValueError, match="energy must be a float in"):
    lowrank.LowRankConv.from_conv(conv, energy=1.5)
  with pytest.raises(ValueError, match="rank must be an int"):
    lowrank.LowRankConv.from_conv(conv, rank=100)
  with pytest.raises(TypeError, match="nnx.Conv"):
    lowrank.LowRankConv.from_conv(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), rank=1)
  grouped = nnx.Conv(8, 8, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="grouped"):
    lowrank.LowRankConv.from_conv(grouped, rank=1)
  conv1d = nnx.Conv(6, 8, (3,), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="spatial' needs a 2-D conv"):
    lowrank.LowRankConv.from_conv(conv1d, scheme="spatial", rank=1)
  model = models.get_model("resnet20", widths=(8, 16, 16), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="at most one of cut and energy"):
    lowrank.decompose(model, cut=0.05, energy=0.9)
  with pytest.raises(TypeError, match="filter_fn"):
    lowrank.decompose(model, filter_fn="conv")


def test_channel_factoring_of_1d_conv():
  k = np.asarray(_rng(6).normal(size=(5, 6, 2)) @ _rng(7).normal(size=(2, 8)), np.float32)
  conv = nnx.Conv(6, 8, (5,), padding="SAME", rngs=nnx.Rngs(0))
  conv.kernel[...] = jnp.asarray(k)  # channel matrix (8, 30) of rank 2
  low = lowrank.LowRankConv.from_conv(conv, cut=1e-3)
  assert low.rank == 2
  assert low.first.kernel.shape == (5, 6, 2) and low.second.kernel.shape == (1, 2, 8)
  x = jnp.asarray(_rng(8).normal(size=(2, 11, 6)), jnp.float32)
  np.testing.assert_allclose(np.asarray(low(x)), np.asarray(conv(x)), atol=1e-4)


def test_export_of_a_model_that_already_has_factored_layers():
  """A second pass (e.g. the dense layer) keeps the earlier factors and checks only the new."""
  m = models.get_model("resnet20", widths=(8, 8, 16), rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  once = lowrank.decompose(m, energy=0.6)
  twice, report = lowrank.export(once, x, energy=0.6, include_dense=True)
  assert report["max_abs_diff_vs_low_rank"] < 1e-5
  first, second = lowrank.factored_layers(once), lowrank.factored_layers(twice)
  assert set(first) < set(second)  # the dense layer is new, the convs are the same objects
  for name, layer in first.items():
    np.testing.assert_array_equal(lowrank.reconstruct(second[name]), lowrank.reconstruct(layer))


def test_conv_flops_count_depthwise_convs():
  """conv_flops_* count every conv layer; the DARTS depthwise convs were left out (28% low)."""
  from sparsejax import compact  # pylint: disable=import-outside-toplevel
  m = models.get_model("darts_eval", num_cells=3, widths=(4, 8, 16), rngs=nnx.Rngs(0))
  x = jnp.ones((1, 8, 8, 3))
  _, report = lowrank.export(m, x, energy=0.5)
  modules = {"/".join(str(k) for k in p): n for p, n in nnx.iter_graph(m)}
  count = compact.count(m, x)
  dense = sum(l.flops for l in count.layers if isinstance(modules.get(l.name), nnx.Linear))
  depthwise = sum(l.flops for l in count.layers if "depthwise" in l.name)
  assert depthwise > 0
  assert report["conv_flops_before"] == count.flops - dense


def test_export_check_is_not_fooled_by_a_zero_sample(monkeypatch):
  """Bias-free convs map a zero input to the same output whatever their kernels, so a
  check on a zero sample alone passes any factored layer; export also checks a random
  input. Here the factored pair is made to disagree with the reference kernel."""
  model = models.get_model("resnet20", widths=(8, 16, 16), rngs=nnx.Rngs(0))
  low, _ = trp.low_rank_params(nnx.state(model, nnx.Param), energy=0.6)
  nnx.update(model, low)  # fresh batch norms: a zero input stays zero up to the fc
  reconstruct = lowrank.reconstruct
  monkeypatch.setattr(lowrank, "reconstruct", lambda layer: 2.0 * reconstruct(layer))
  x0 = jnp.zeros((2, 32, 32, 3), jnp.float32)
  with pytest.raises(AssertionError, match="differ from the low-rank model"):
    lowrank.export(model, x0, cut=1e-3)
  _, rep = lowrank.export(model, x0, cut=1e-3, check=False)
  assert rep["max_abs_diff_vs_low_rank"] > 1e-2


def test_export_report_names_the_default_cut():
  """With neither cut nor energy the paper's cut 0.05 is used; the report said cut=None."""
  m = models.get_model("resnet20", widths=(8, 8, 16), rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  _, default = lowrank.export(m, x)
  _, explicit = lowrank.export(m, x, cut=0.05)
  assert default["cut"] == 0.05 and default["energy"] is None
  assert default["layers"] == explicit["layers"]
