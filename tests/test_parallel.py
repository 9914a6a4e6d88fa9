"""sparsejax.parallel: meshes, rules, state sharded like params; sharded training.

The rule and mesh logic is tested in this process (one device, abstract
meshes). Everything that needs several devices runs once in a subprocess on 8
fake CPU devices (``tests/parallel_check.py``, which prints JSON) and the tests
below assert on its results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from sparsejax import optim
from sparsejax import parallel
from sparsejax import tree as tree_lib

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"data": 4, "model": 2}
TOL = 2e-5  # relative; sharded reductions only reorder float sums
# TRP truncates with a float32 SVD at every step: reordered sums move the singular vectors by
# about eps * |W| / gap, which 5 steps carry into every entry (3.3e-5 seen on a 2-core AMD
# EPYC host). A wrong sharded SVD (of a local shard, say) is off by O(1).
TOL_BY_TRANSFORM = {"trained_rank_pruning": 1e-4}


# ----------------------------------------------------------------------------
# Meshes and configs (one device)
# ----------------------------------------------------------------------------


def test_make_mesh_fills_minus_one_with_auto_axes():
  n = jax.device_count()
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  assert dict(mesh.shape) == {"data": n, "model": 1}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 2
  mesh = parallel.make_mesh([("model", 1), ("data", -1)])  # pairs keep their order
  assert mesh.axis_names == ("model", "data")
  mesh = parallel.make_mesh("model=1, data=-1")  # a command-line string too
  assert dict(mesh.shape) == {"model": 1, "data": n} and mesh.axis_names == ("model", "data")


@pytest.mark.parametrize("axes, match", [
    ({"data": -1, "model": -1}, "one axis only"),
    ({"data": 0}, r"axes\['data'\] must be a positive int or -1"),
    ({"data": True}, "positive int"),
    ({"data": 2 * jax.device_count()}, "describe"),
    ([("data", 1), ("data", -1)], "twice"),
    ({}, "at least one axis"),
    ([("data",)], "pairs"),
    ("data:4", "must look like 'data=-1,model=2'"),
    ("data=x", "sizes must be ints"),
])
def test_make_mesh_bad_axes(axes, match):
  with pytest.raises(ValueError, match=match):
    parallel.make_mesh(axes)


def test_make_mesh_bad_devices():
  # A device listed twice made a mesh that only failed later, deep inside JAX
  # (safe_zip length mismatch); no device at all an IndexError.
  d = jax.devices()[0]
  with pytest.raises(ValueError, match=r"devices must be a non-empty sequence of distinct "
                                       r"devices, got 2 device\(s\) of which 1 distinct"):
    parallel.make_mesh({"data": -1}, devices=[d, d])
  with pytest.raises(ValueError, match="devices must be a non-empty sequence"):
    parallel.make_mesh({"data": -1}, devices=[])


def test_make_mesh_bad_type():
  with pytest.raises(TypeError, match="mapping of axis name"):
    parallel.make_mesh(4)


def test_mesh_and_rules_from_config():
  c = ml_collections.ConfigDict()
  assert parallel.mesh_from_config(c) is None
  c.mesh = None
  assert parallel.mesh_from_config(c) is None
  c.mesh = {"model": 1, "data": -1}  # a ConfigDict lists keys sorted
  assert parallel.mesh_from_config(c).axis_names == ("data", "model")
  assert parallel.rules_from_config(c) == ()
  c.sharding_rules = "model_parallel"
  assert parallel.rules_from_config(c) == parallel.MODEL_PARALLEL_RULES
  c.sharding_rules = "fsdp"
  with pytest.raises(ValueError, match="sharding_rules"):
    parallel.rules_from_config(c)
  c = ml_collections.ConfigDict({"sharding_rules": [["kernel$", [None, "model"]]]})
  assert parallel.rules_from_config(c) == (("kernel$", [None, "model"]),)


def test_initialize_distributed_only_when_asked():
  c = ml_collections.ConfigDict()
  assert parallel.initialize_distributed(c) is False
  c.distributed = False
  assert parallel.initialize_distributed(c) is False
  c = ml_collections.ConfigDict({"distributed": {"coordinator": "host:1234"}})
  with pytest.raises(ValueError, match="unknown keys"):
    parallel.initialize_distributed(c)
  with pytest.raises(TypeError, match="True or a mapping"):
    parallel.initialize_distributed({"distributed": "yes"})


# ----------------------------------------------------------------------------
# Rules -> specs
# ----------------------------------------------------------------------------


def test_first_matching_rule_wins_and_default_is_replicated():
  rules = [(r"^fc/kernel$", (None, "data")), (r"kernel$", (..., "model"))]
  assert parallel.partition_spec("fc/kernel", (8, 4), rules, SIZES) == P(None, "data")
  assert parallel.partition_spec("conv/kernel", (3, 3, 4, 8), rules, SIZES) == P(
      None, None, None, "model")
  assert parallel.partition_spec("fc2/kernel", (8, 4), rules, SIZES) == P(None, "model")
  assert parallel.partition_spec("fc/bias", (4,), rules, SIZES) == P()
  assert parallel.partition_spec("fc/kernel", (8, 4), [], SIZES) == P()


def test_spec_forms():
  # "..." as a string, PartitionSpec with ..., several axes on one dimension,
  # a short spec (trailing axes whole), trailing None trimmed.
  assert parallel.partition_spec("k", (3, 8), [("k", ("...", "model"))], SIZES) == P(None, "model")
  assert parallel.partition_spec("k", (8, 3), [("k", P("model", ...))], SIZES) == P("model")
  assert parallel.partition_spec("k", (16, 3), [("k", (("data", "model"),))], SIZES) == P(
      ("data", "model"))
  assert parallel.partition_spec("k", (8, 3, 5), [("k", ("data", None))], SIZES) == P("data")
  assert parallel.partition_spec("k", (8,), [("k", None)], SIZES) == P()


def test_partition_specs_on_a_tree_and_abstract_mesh():
  mesh = AbstractMesh((4, 2), ("data", "model"))
  params = {"conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.float32),
                     "bias": jnp.zeros(8)},
            "bn": {"scale": jnp.ones(8), "mean": jnp.zeros(8)}}
  specs = parallel.partition_specs(params, parallel.MODEL_PARALLEL_RULES, mesh)
  assert specs == {"conv": {"kernel": P(None, None, None, "model"), "bias": P("model")},
                   "bn": {"scale": P("model"), "mean": P("model")}}


@pytest.mark.parametrize("rules, shape, match", [
    ([("k", (None, "model"))], (3,), "has 2 entries, but 'a/k' has shape"),
    ([("k", (None, None, ..., "model"))], (3, 4), "needs at least 3 dimensions"),
    ([("k", ("model", "model"))], (4, 4), "twice"),
    ([("k", ("tensor",))], (4,), "mesh axis 'tensor'"),
    ([("k", (..., ...))], (4,), "one ..."),
    ([("(", ("model",))], (4,), "invalid regex"),
    ([("k",)], (4,), r"rules\[0\] must be a \(path_regex, spec\) pair"),
])
def test_bad_rules(rules, shape, match):
  with pytest.raises(ValueError, match=match):
    parallel.partition_spec("a/k", shape, rules, SIZES)


@pytest.mark.parametrize("sizes", [{"data": -1, "model": 2}, {"data": 0}, {"data": 2.7},
                                   {"data": "4"}, {"data": True}])
def test_bad_mesh_sizes_mapping(sizes):
  # A mapping of axis sizes must hold positive ints: -1 (make_mesh's "the rest") or a
  # float split every dimension silently, 0 divided by zero.
  bad = next(k for k, v in sizes.items() if v != 2)
  with pytest.raises(ValueError, match=rf"mesh\['{bad}'\] must be a positive int .* got "):
    parallel.partition_spec("fc/kernel", (6, 3), [("kernel", ("data",))], sizes)


def test_bad_spec_entry_type():
  with pytest.raises(TypeError, match="spec entries"):
    parallel.partition_spec("k", (4,), [("k", (3,))], SIZES)
  with pytest.raises(TypeError, match="rules must be a sequence"):
    parallel.partition_spec("k", (4,), "k", SIZES)


def test_indivisible_dimension_errors_or_stays_whole():
  rules = [("kernel", ("data", "model"))]
  with pytest.raises(ValueError, match=r"'fc/kernel' has shape \(6, 3\); dimension 0 \(6\) "
                                       r"is split over mesh axes 'data' \(4 parts\)"):
    parallel.partition_spec("fc/kernel", (6, 3), rules, SIZES)
  # Only the dimension that does not divide is kept whole.
  assert parallel.partition_spec("fc/kernel", (6, 4), rules, SIZES,
                                 indivisible="replicate") == P(None, "model")
  assert parallel.partition_spec("fc/kernel", (8, 3), rules, SIZES,
                                 indivisible="replicate") == P("data")
  with pytest.raises(ValueError, match="indivisible must be one of"):
    parallel.partition_spec("fc/kernel", (8, 4), rules, SIZES, indivisible="pad")


# ----------------------------------------------------------------------------
# Optimizer state like its parameters
# ----------------------------------------------------------------------------


def _params():
  return {"features": {"conv": {"kernel": jnp.ones((3, 3, 4, 8)) * 0.1},
                       "bn": {"scale": jnp.linspace(0.1, 1.0, 8), "bias": jnp.zeros(8)}},
          "fc": {"kernel": jnp.ones((8, 4)) * 0.1, "bias": jnp.zeros(4)}}


def test_specs_like_maps_every_sparse_state_to_its_parameter():
  params = _params()
  tx = optax.chain(
      optim.sparse_group_lasso(0.01, 2.5, num_examples=10.0),
      optax.adam(1e-3),
      optim.network_slimming(0.1, 0.01, 1.0),
      optim.magnitude_pruning(0.5, begin_step=0, end_step=1, update_every=1))
  state = jax.eval_shape(tx.init, params)  # works on abstract trees too
  pspecs = parallel.partition_specs(params, parallel.MODEL_PARALLEL_RULES, SIZES)
  specs = parallel.specs_like(state, params, pspecs)
  got = dict(tree_lib.leaves_with_paths(specs, is_leaf=lambda x: isinstance(x, P)))
  kernel4, vec = P(None, None, None, "model"), P("model")
  expected = {
      "0/u/features/conv/kernel": kernel4, "0/u/fc/kernel": P(None, "model"),
      "0/beta/features/conv/kernel": P(), "0/beta/fc/kernel": P(),  # per-leaf scalars
      "0/count": P(), "0/lam": P(), "0/a": P(), "0/kind": P(),
      "1/0/count": P(), "1/0/mu/features/conv/kernel": kernel4,
      "1/0/nu/features/bn/scale": vec, "1/0/nu/fc/bias": vec,
      "2/xi/features/bn/scale": vec, "2/count": P(),
      "3/masks/features/conv/kernel": kernel4, "3/masks/fc/kernel": P(None, "model"),
  }
  for path, spec in expected.items():
    assert got[path] == spec, path
  # Only leaves that mirror a parameter are split.
  param_paths = [p for p, _ in tree_lib.leaves_with_paths(params)]
  for path, spec in got.items():
    if spec != P():
      assert any(path.endswith("/" + p) for p in param_paths), path


def test_specs_like_longest_path_and_shape_must_match():
  params = {"kernel": jnp.zeros((4, 4)), "a": {"kernel": jnp.zeros((4, 4))}}
  pspecs = {"kernel": P("data"), "a": {"kernel": P(None, "model")}}
  tree = {"x": {"a": {"kernel": jnp.zeros((4, 4))}, "kernel": jnp.zeros((4, 4)),
                "b": {"kernel": jnp.zeros((4, 2))}}, "n": 3}
  got = parallel.specs_like(tree, params, pspecs)
  assert got == {"x": {"a": {"kernel": P(None, "model")}, "kernel": P("data"),
                       "b": {"kernel": P()}}, "n": P()}
  with pytest.raises(ValueError, match="tree structure of params"):
    parallel.specs_like(tree, params, {"kernel": P()})


def test_one_device_training_helpers():
  mesh = parallel.make_mesh({"data": -1})
  params = parallel.shard_params(_params(), mesh, [("kernel", (..., "data"))],
                                 indivisible="replicate")
  tx = optax.chain(optax.sgd(0.1, momentum=0.9),
                   optim.magnitude_pruning(0.5, begin_step=0, end_step=1, update_every=1))
  state = parallel.init_opt_state(tx, params)
  ref = tx.init(_params())
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), state, ref))
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.mesh == mesh
  bs = parallel.batch_sharding(mesh)
  assert parallel.process_batch_slice(bs, 12) == slice(0, 12)
  batch = {"image": np.arange(24, dtype=np.float32).reshape(12, 2),
           "label": np.arange(12, dtype=np.int32)}
  g = parallel.make_global_batch(batch, bs, 12)
  np.testing.assert_array_equal(np.asarray(g["image"]), batch["image"])
  assert sum(parallel.bytes_per_device(g).values()) == 12 * 2 * 4 + 12 * 4
  with pytest.raises(ValueError, match="axis must name mesh axes"):
    parallel.batch_sharding(mesh, "model")
  with pytest.raises(ValueError, match="NamedSharding"):
    parallel.shardings_like_params(ref, _params())


# ----------------------------------------------------------------------------
# 8 fake devices (subprocess)
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip())
  proc = subprocess.run([sys.executable, os.path.join(HERE, "parallel_check.py")],
                        env=env, capture_output=True, text=True, timeout=600, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("JSON:")]
  assert proc.returncode == 0 and lines, (
      f"parallel_check.py failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1][len("JSON:"):])


TRANSFORMS = ["magnitude_pruning", "network_slimming", "sparse_group_lasso",
              "trained_rank_pruning"]
MESHES = ["data8", "data4_model2"]


def _close(cmp, tol=TOL):
  assert cmp["max_rel_diff"] <= tol, cmp
  assert cmp["bool_mismatches"] == 0 and cmp["int_mismatches"] == 0, cmp
  assert cmp["zero_mismatches"] == 0, cmp


def _transform(sharded, name):
  if name not in sharded["transforms"]:
    pytest.skip(f"{name} does not exist in this checkout")
  return sharded["transforms"][name]


def test_eight_devices(sharded):
  assert sharded["devices"] == 8


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_sharded_steps_equal_unsharded_steps(sharded, name, mesh):
  r = _transform(sharded, name)
  got = r[mesh]
  assert got["step"] == 5
  for part in ("params", "model_state", "opt_state"):
    _close(got[part], TOL_BY_TRANSFORM.get(name, TOL))
  # The comparison is not vacuous: the reference state is partly sparse / low rank.
  for field, (z, n) in r["reference_zeros"].items():
    if field == "ranks":
      assert all(a < b for a, b in zip(z, n)) and z, (z, n)
    else:
      assert 0 < z < n, (field, z, n)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_state_is_sharded_like_its_parameter(sharded, name):
  r = _transform(sharded, name)
  rows = r["data4_model2"]["specs"]["rows"]
  assert rows
  for row in rows:
    if row["kind"] == "rank":  # TRP keeps one int32 rank per kernel: replicated
      assert row["spec"] == [] and row["bytes_device_max"] == 4
      continue
    # Masks, xi, U carry their parameter's spec, split over "model" by the rules.
    assert row["spec"] == row["param_spec"] and row["spec"][-1] == "model", row
    assert row["bytes_device_max"] * 2 == row["bytes"], row
  params = r["data4_model2"]["specs"]["params"]
  for path, spec in params.items():
    assert spec and spec[-1] == "model", (path, spec)  # MODEL_PARALLEL_RULES split them all
  for leaf in r["data4_model2"]["specs"]["all"]:
    ends = [p for p in params if leaf["path"].endswith("/" + p)]
    if leaf["shape"] == [] or not ends:
      assert leaf["spec"] == [], leaf
  for row in r["data8"]["specs"]["rows"]:  # data-only mesh: everything replicated
    assert row["spec"] == [] and row["bytes_device_max"] == row["bytes"]


def test_global_thresholds_gather_no_parameter(sharded):
  hlo = sharded["hlo"]
  for key in ("magnitude_pruning", "masks_global", "masks_uniform"):
    ops = {c["op"] for c in hlo[key]}
    assert "all-gather" not in ops, (key, hlo[key])
    # One all-reduce of int32 counts (one per leaf at most) in the bisection loop.
    assert [c["op"] for c in hlo[key]] == ["all-reduce"], hlo[key]
    assert hlo[key][0]["max_elements"] <= 3, hlo[key]
  assert hlo["masks_global_equal"] and hlo["masks_uniform_equal"]
  assert hlo["network_slimming"] == []  # elementwise: no communication at all
  # Group norms of a dense kernel split over its columns: one all-reduce of
  # the per-row partial sums (64 rows), never the kernel.
  assert [c["op"] for c in hlo["sparse_group_lasso"]] == ["all-reduce"]
  assert hlo["sparse_group_lasso"][0]["max_elements"] == 64


def test_svd_steps_gather_the_kernel(sharded):
  # Documented in docs/scaling.md: an SVD sees the whole matrix on every device.
  svd = sharded["hlo"]["svd_nuclear"]
  assert svd["spec"] == ["None", "model"]
  assert [c["op"] for c in svd["collectives"]] == ["all-gather"]
  assert svd["collectives"][0]["max_elements"] == np.prod(svd["shape"])
  if "trained_rank_pruning" in sharded["hlo"]:
    trp = sharded["hlo"]["trained_rank_pruning"]
    assert {c["op"] for c in trp} == {"all-gather"}
    assert all(c["max_elements"] == 3 * 3 * 8 * 16 for c in trp)


def test_resume_on_another_mesh_shape(sharded):
  r = sharded["resume"]
  assert r["restored_step"] == 3
  cmp = r["restored_equals_saved"]
  assert cmp["max_float_diff"] == 0.0 and cmp["bool_mismatches"] == 0, cmp
  assert r["restored_specs_match_target"]
  assert r["restored_mask_specs"] == ["(None, 'model')", "(None, None, None, 'model')"]
  cont = r["continued_vs_uninterrupted"]
  assert cont["step"] == 6
  _close(cont["params"])
  _close(cont["opt_state"])
  assert r["mask_zeros"] > 0


def test_trainer_with_mesh_resumes_on_another_mesh(sharded):
  r = sharded["trainer"]
  assert r["stopped"] == {"stopped_at_step": 7}
  assert r["final_steps"] == [20, 20]
  _close(r["params"])
  assert r["test_accuracy"][0] == r["test_accuracy"][1]
  assert r["sparsity"][0] == r["sparsity"][1] == pytest.approx(0.9, abs=1e-3)
  assert r["metrics_steps"] == [20]
  assert "describe 3 devices, but there are 8" in r["bad_mesh_error"]
  assert "config.batch_size=36 must be divisible by the 8 batch shards" in r["bad_batch_error"]


# ----------------------------------------------------------------------------
# Two processes (jax.distributed on this machine, 4 fake devices each)
# ----------------------------------------------------------------------------


def _free_port() -> int:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_DISTRIBUTED_TRAINER = """
import os, sys
sys.path[:0] = [{root!r}, {here!r}]
import jax
from fake_data import write_fake_mnist
from test_train import _config
from sparsejax import train
write_fake_mnist({d!r}, n_train=320, n_test=40)
c = _config({d!r}, num_epochs=1, stop_after_steps=1, **{{"algorithm.end_epoch": 1.0}})
c.distributed = {{"coordinator_address": "127.0.0.1:{port}", "num_processes": 1,
                  "process_id": 0}}
print("RESULT", train.train_and_evaluate(c, os.path.join({d!r}, "run")),
      jax.distributed.is_initialized())
"""


def test_trainer_config_distributed_initializes_before_touching_devices(tmp_path):
  # config.distributed must reach jax.distributed.initialize before the trainer
  # touches the backend (jax.process_index() in the workdir check did, so it raised).
  code = _DISTRIBUTED_TRAINER.format(root=os.path.dirname(HERE), here=HERE, d=str(tmp_path),
                                     port=_free_port())
  env = dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "RESULT {'stopped_at_step': 1} True" in proc.stdout, proc.stdout[-2000:]


def test_two_processes_load_their_rows_and_match_one_process(tmp_path):
  import multihost_check as mh  # pylint: disable=import-outside-toplevel
  from sparsejax import data as data_lib  # pylint: disable=import-outside-toplevel
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  from fake_data import write_fake_mnist  # pylint: disable=import-outside-toplevel
  write_fake_mnist(str(tmp_path), n_train=320, n_test=40)
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_check.py"), str(i),
                             str(port), str(tmp_path), str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n\n".join(l[-3000:] for l in logs)

  # The reference: one process, one device, the whole batch.
  ds = data_lib.load("mnist", "train", data_dir=str(tmp_path))
  tx = mh.make_tx()
  state, train_def, _ = train.create_train_state(mh.make_model(), tx)
  step = train.make_train_step(train_def, tx)
  batches = data_lib.train_batches(ds, batch_size=mh.BATCH, seed=mh.SEED)
  labels = []
  for _ in range(mh.STEPS):
    b = next(batches)
    labels.append(np.asarray(b["label"]))
    state, _ = step(state, b)
  labels = np.stack(labels)
  ref = {f"params/{k}": v for k, v in mh.flat(state.params).items()}
  masks = optim.find_states(state.opt_state, optim.MagnitudePruningState)[0].masks
  ref.update({f"masks/{k}": v for k, v in mh.flat(masks).items()})
  assert sum(int(np.sum(~v)) for k, v in ref.items() if k.startswith("masks/")) > 0

  # The trainer: both processes agree; only the first wrote metrics and the report.
  reports = [json.load(open(tmp_path / f"report_{i}.json")) for i in range(2)]
  assert reports[0] == reports[1]
  lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [10]
  with open(tmp_path / "run" / "report.json") as f:
    assert json.load(f)["params_sha256"] == reports[0]["params_sha256"]

  r0, r1 = np.load(tmp_path / "rows_0.npz"), np.load(tmp_path / "rows_1.npz")
  for mesh in ("data8", "data4_model2"):
    # Each process fed its own half of every global batch; together the whole batch.
    assert r0[mesh].shape == (mh.STEPS, mh.BATCH // 2)
    np.testing.assert_array_equal(np.concatenate([r0[mesh], r1[mesh]], axis=1), labels)
    got = np.load(tmp_path / f"{mesh}.npz")
    assert sorted(got.files) == sorted(ref)
    for k, want in ref.items():
      if k.startswith("masks/"):
        np.testing.assert_array_equal(got[k], want, err_msg=f"{mesh} {k}")
      else:
        scale = max(float(np.max(np.abs(want))), 1e-12)
        assert float(np.max(np.abs(got[k] - want))) <= TOL * scale, (mesh, k)


@pytest.mark.parametrize("fields, match", [
    ({"mesh": "data=x"}, r"config.mesh sizes must be ints"),
    ({"mesh": {"data": 0}}, r"config.mesh\['data'\] must be a positive int or -1"),
    ({"mesh": "data=-1", "sharding_rules": [("kernel", ("model",))]},
     r"config.sharding_rules: rules\[0\] \('kernel'\): spec .* names mesh axis 'model'"),
    ({"mesh": "data=-1", "sharding_rules": "model-parallel"}, r"config.sharding_rules must be"),
    ({"mesh": "data=-1", "sharding_rules": [("(", ("data",))]}, r"config.sharding_rules: .*regex"),
    ({"sharding_indivisible": "pad"}, r"config.sharding_indivisible must be one of"),
])
def test_trainer_checks_sharding_fields_before_any_work(fields, match):
  # Raised by validate_config, before data is loaded or a model built (a bad mesh used
  # to fail after both, in words that did not name the config field; a bad
  # sharding_indivisible was not checked at all without a mesh).
  from configs import default  # pylint: disable=import-outside-toplevel
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  c = default.get_config().to_dict()  # plain: the config's mesh field is typed str
  c.update(fields)
  c = ml_collections.ConfigDict(c)
  with pytest.raises((ValueError, TypeError), match=match):
    train.validate_config(c)
  parallel.check_config(default.get_config())  # the defaults pass
