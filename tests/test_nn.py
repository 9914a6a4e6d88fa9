"""SparseLinear and sparsify: outputs, gradients and training against masked dense layers."""

from __future__ import annotations

import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from sparsejax import masks
from sparsejax import models
from sparsejax import kernels as spk
from sparsejax.nn import SparseIndices, SparseLinear, sparsify

FORMAT_KW = {
    "bsr": dict(format="bsr", block_shape=(16, 8)),
    "balanced": dict(format="balanced", block_shape=(8, 16)),
    "nm0": dict(format="nm", n=2, m=4, axis=0),
    "nm1": dict(format="nm", n=1, m=4, axis=1),
}


def _mask_for(kernel, name):
  if name == "bsr":
    return np.asarray(masks.block(kernel, 0.6, (16, 8)))
  if name == "balanced":
    return np.asarray(spk.balanced_block_mask(kernel, 0.5, (8, 16)))
  kw = FORMAT_KW[name]
  return np.asarray(masks.n_by_m(kernel, kw["n"], kw["m"], axis=kw["axis"]))


@pytest.mark.parametrize("name", list(FORMAT_KW))
def test_from_dense_matches_masked_linear_and_grads(name):
  lin = nnx.Linear(48, 32, rngs=nnx.Rngs(0))
  kernel, bias = lin.kernel[...], lin.bias[...]
  mask = _mask_for(kernel, name)
  sp = SparseLinear.from_dense(lin, mask, **FORMAT_KW[name])
  x = jax.random.normal(jax.random.key(1), (5, 48))
  np.testing.assert_allclose(sp(x), x @ jnp.where(mask, kernel, 0) + bias, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(sp.dense_kernel(), jnp.where(mask, kernel, 0))
  assert isinstance(sp.indices, SparseIndices) and not isinstance(sp.indices, nnx.Param)

  # Gradients of a loss through the layer == jax.grad of the dense masked computation.
  def sparse_loss(model):
    return jnp.sum(jnp.tanh(model(x)) ** 2)

  def dense_loss(k, b):
    return jnp.sum(jnp.tanh(x @ jnp.where(mask, k, 0) + b) ** 2)

  g = nnx.grad(sparse_loss)(sp)
  ek, eb = jax.grad(dense_loss, argnums=(0, 1))(kernel, bias)
  w_grad = sp.weight
  w_grad = (w_grad.with_values(g["values"][...]) if name.startswith("nm")
            else w_grad.with_data(g["values"][...]))
  np.testing.assert_allclose(w_grad.to_dense(), ek, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(g["bias"][...], eb, atol=1e-5, rtol=1e-5)
  assert "indices" not in g  # structure is not a Param: it gets no gradient


def test_from_dense_implied_mask_dtype_and_errors():
  lin = nnx.Linear(32, 16, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  mask = np.asarray(masks.block(lin.kernel[...], 0.5, (8, 8)))
  lin.kernel[...] = jnp.where(mask, lin.kernel[...], 0)
  sp = SparseLinear.from_dense(lin, None, format="bsr", block_shape=(8, 8))
  assert sp.weight.nnz_blocks == int(mask.sum()) // 64
  x = jnp.ones((3, 32))
  y = sp(x)
  assert y.dtype == jnp.bfloat16
  exp = x @ lin.kernel[...] + lin.bias[...]
  np.testing.assert_allclose(np.asarray(y, np.float32), exp, atol=0.05, rtol=0.02)
  with pytest.raises(TypeError, match="nnx.Linear"):
    SparseLinear.from_dense(nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="format must be one of"):
    SparseLinear.from_dense(lin, mask, format="csr")
  with pytest.raises(ValueError, match="does not fit block_shape"):
    SparseLinear.from_dense(lin, mask, format="bsr", block_shape=(16, 16))
  with pytest.raises(ValueError, match="more than n=2"):
    SparseLinear.from_dense(lin, np.ones((32, 16), bool), format="nm")
  with pytest.raises(ValueError, match="bias must have shape"):
    SparseLinear(sp.weight, jnp.zeros(3))
  with pytest.raises(TypeError, match="weight must be"):
    SparseLinear(jnp.zeros((4, 4)))


def _mlp(rngs):
  return models.LeNet300100(widths=(64, 32), in_features=64, num_classes=4, rngs=rngs)


def _data(seed=0, n=64):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(4, 64)) * 2
  labels = rng.integers(0, 4, n)
  x = centers[labels] + rng.normal(size=(n, 64))
  return jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32)


def test_sparse_model_trains_like_masked_dense_model():
  """LeNet-300-100 (narrow) with two SparseLinear layers vs its masked dense twin.

  With masked gradients the dense twin's kernels stay masked, so both models
  compute the same function at every step; SGD with momentum on the sparse
  values must follow the same trajectory.
  """
  dense = _mlp(nnx.Rngs(0))
  params = nnx.state(dense, nnx.Param)
  mask_tree = masks.structured(
      params, lambda w: masks.block(w, 0.75, (16, 8)),
      filter_fn=lambda path, leaf: path in ("fc1/kernel", "fc2/kernel"))
  nnx.update(dense, masks.apply(params, mask_tree))
  sparse = _mlp(nnx.Rngs(0))
  nnx.update(sparse, nnx.state(dense, nnx.Param))
  replaced = sparsify(sparse, mask_tree, format="bsr", block_shape=(16, 8))
  assert replaced == ["fc1", "fc2"]
  assert isinstance(sparse.fc1, SparseLinear) and isinstance(sparse.fc3, nnx.Linear)

  x, y = _data()
  tx = optax.sgd(0.05, momentum=0.9)
  opt_s = nnx.Optimizer(sparse, tx, wrt=nnx.Param)
  opt_d = nnx.Optimizer(dense, tx, wrt=nnx.Param)
  flat_masks = {"fc1": mask_tree["fc1"]["kernel"], "fc2": mask_tree["fc2"]["kernel"]}

  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  @nnx.jit
  def step_sparse(model, opt):
    loss, g = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, g)
    return loss

  @nnx.jit
  def step_dense(model, opt):
    loss, g = nnx.value_and_grad(loss_fn)(model)
    for name, m in flat_masks.items():   # the gradient of the masked computation
      g[name]["kernel"][...] = jnp.where(m[...], g[name]["kernel"][...], 0)
    opt.update(model, g)
    return loss

  losses = []
  for _ in range(15):
    ls, ld = step_sparse(sparse, opt_s), step_dense(dense, opt_d)
    np.testing.assert_allclose(ls, ld, rtol=1e-4, atol=1e-5)
    losses.append(float(ls))
  assert losses[-1] < 0.5 * losses[0]
  np.testing.assert_allclose(sparse(x), dense(x), rtol=1e-4, atol=1e-4)
  for name in ("fc1", "fc2"):
    np.testing.assert_allclose(getattr(sparse, name).dense_kernel(),
                               getattr(dense, name).kernel[...], rtol=1e-4, atol=1e-5)


def test_sparsify_options_and_split_merge():
  model = _mlp(nnx.Rngs(0))
  k1 = model.fc1.kernel[...]
  flat = {"fc1/kernel": np.asarray(masks.n_by_m(k1, 2, 4, axis=0)),
          "fc3/kernel": np.ones((32, 4), bool)}       # keeps everything: stays dense
  assert sparsify(model, flat, format="nm") == ["fc1"]
  assert isinstance(model.fc3, nnx.Linear) and model.fc1.format == "nm"
  x, _ = _data(n=6)
  expected = model(x)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  assert "indices" in rest["fc1"] and "values" in params["fc1"]
  again = nnx.merge(graphdef, params, rest)
  np.testing.assert_allclose(again(x), expected, rtol=1e-6)
  # masks=None: every Linear, with the mask implied by its zeros (dense -> one full block set).
  other = _mlp(nnx.Rngs(1))
  assert sparsify(other, None, format="bsr", block_shape=(4, 4)) == ["fc1", "fc2", "fc3"]
  np.testing.assert_allclose(other.fc2.dense_kernel(), _mlp(nnx.Rngs(1)).fc2.kernel[...])


def test_sparsify_rejects_a_mask_path_the_model_lacks():
  model = _mlp(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"masks name parameters the model does not have: "
                                       r"\['fc9/kernel'\]"):
    sparsify(model, {"fc9/kernel": np.ones((32, 4), bool)})
  assert isinstance(model.fc1, nnx.Linear)  # nothing replaced


def test_sparsify_inside_sequential():
  seq = nnx.Sequential(nnx.Linear(16, 16, rngs=nnx.Rngs(0)), nnx.relu,
                       nnx.Linear(16, 8, rngs=nnx.Rngs(1)))
  mask = np.asarray(masks.block(seq.layers[2].kernel[...], 0.5, (8, 8)))
  x = jax.random.normal(jax.random.key(0), (3, 16))
  h = jax.nn.relu(seq.layers[0](x))
  expected = h @ jnp.where(mask, seq.layers[2].kernel[...], 0) + seq.layers[2].bias[...]
  assert sparsify(seq, {"layers/2/kernel": mask}, block_shape=(8, 8)) == ["layers/2"]
  assert isinstance(seq.layers[2], SparseLinear) and isinstance(seq.layers[0], nnx.Linear)
  np.testing.assert_allclose(seq(x), expected, atol=1e-5, rtol=1e-5)
