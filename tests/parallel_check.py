"""Sharded-training checks on 8 fake CPU devices; prints one JSON object.

``tests/test_parallel.py`` runs this file in a subprocess, because the device
count must be fixed before JAX starts, and asserts on its output:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python tests/parallel_check.py [SECTION ...] > out.json

Sections (default: all): ``transforms`` (N sharded steps == N unsharded steps
for every sparsejax transform, under data-only and data x model meshes, with
the expected shardings), ``hlo`` (collectives in the compiled transform
updates), ``resume`` (save on data=8, restore on data=4 x model=2, continue),
``trainer`` (``train_and_evaluate`` with ``config.mesh``, resumed on another
mesh shape).
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import re
import tempfile

import jax
import numpy as np
import optax
from flax import nnx

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.join(_ROOT, "tests"))

from sparsejax import checkpoint as ckpt_lib  # pylint: disable=wrong-import-position
from sparsejax import masks as masks_lib
from sparsejax import models
from sparsejax import optim
from sparsejax import parallel
from sparsejax import prox
from sparsejax import train
from sparsejax import tree as tree_lib

STEPS = 5
BATCH = 16
RULES = parallel.MODEL_PARALLEL_RULES

try:  # trained rank pruning, if it exists by now
  from sparsejax.optim import trp as trp_lib  # pylint: disable=g-import-not-at-top
except ImportError:
  trp_lib = None


_SPARSE_STATES = [("mask", optim.MagnitudePruningState, "masks"),
                  ("xi", optim.NetworkSlimmingState, "xi"),
                  ("u", optim.SparseGroupLassoState, "u")]
if trp_lib is not None:
  _SPARSE_STATES.append(("rank", trp_lib.TrainedRankPruningState, "ranks"))


def _meshes():
  return {
      "data8": (parallel.make_mesh({"data": -1}), ()),
      "data4_model2": (parallel.make_mesh([("data", 4), ("model", 2)]), RULES),
  }


def _model():
  return models.VGG(widths=(8, "M", 16), num_classes=4, in_channels=3, input_size=8,
                    rngs=nnx.Rngs(0))


def _batches(n, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.standard_normal((BATCH, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 4, BATCH).astype(np.int32)} for _ in range(n)]


def _transforms():
  out = {
      "magnitude_pruning": optax.chain(
          optax.sgd(0.05, momentum=0.9),
          optim.magnitude_pruning(0.7, begin_step=0, end_step=3, update_every=1,
                                  distribution="global")),
      "network_slimming": optax.chain(
          optax.sgd(0.05, momentum=0.9),
          optim.network_slimming(0.05, 3.0, 1.0, xi_init=(0.0, 1.0))),
      "sparse_group_lasso": optax.chain(
          optim.sparse_group_lasso(0.005, 2.5, num_examples=16.0, kind="l0"),
          optax.adam(1e-2)),
  }
  if trp_lib is not None:
    out["trained_rank_pruning"] = trp_lib.trp_chain(
        optax.sgd(0.05, momentum=0.9), energy=0.8, nuclear=3e-3, period=2)
  return out


def _run(tx, mesh=None, rules=(), steps=STEPS, batches=None):
  state, train_def, _ = train.create_train_state(_model(), tx, mesh=mesh, rules=rules)
  shardings = None
  if mesh is not None:
    bs = parallel.batch_sharding(mesh)
    shardings = (jax.tree.map(lambda x: x.sharding, state), bs)
  step = train.make_train_step(train_def, tx, shardings)
  for b in (batches or _batches(steps))[:steps]:
    if mesh is not None:
      b = parallel.make_global_batch(b, shardings[1], BATCH)
    state, _ = step(state, b)
  return state


def _compare(a, b) -> dict:
  """Max |diff| of float leaves, mismatches of bool/int leaves, by path."""
  fa, fb = tree_lib.leaves_with_paths(a), tree_lib.leaves_with_paths(b)
  assert [p for p, _ in fa] == [p for p, _ in fb], "tree paths differ"
  out = {"max_float_diff": 0.0, "max_rel_diff": 0.0, "bool_mismatches": 0, "int_mismatches": 0,
         "zero_mismatches": 0, "leaves": len(fa)}
  for (path, x), (_, y) in zip(fa, fb):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype == bool:
      out["bool_mismatches"] += int(np.sum(x != y))
    elif x.dtype.kind in "iu":
      out["int_mismatches"] += int(np.sum(x != y))
    else:
      d = float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
      scale = float(np.max(np.abs(x))) if x.size else 0.0
      out["zero_mismatches"] += int(np.sum((x == 0) != (y == 0)))
      out["max_float_diff"] = max(out["max_float_diff"], d)
      out["max_rel_diff"] = max(out["max_rel_diff"], d / max(scale, 1e-12))
  return out


def _spec(x):
  return tuple(x.sharding.spec)


def _state_specs(state) -> dict:
  """Sharding specs of the sparsejax state leaves, with their parameter's spec."""
  pspec = {p: _spec(x) for p, x in tree_lib.leaves_with_paths(state.params)}
  pbytes = {p: x.nbytes for p, x in tree_lib.leaves_with_paths(state.params)}
  rows = []
  for kind, state_type, field in _SPARSE_STATES:
    for st in optim.find_states(state.opt_state, state_type):
      for path, leaf in tree_lib.leaves_with_paths(getattr(st, field)):
        dev0 = parallel.bytes_per_device(leaf)
        rows.append({"kind": kind, "path": path, "spec": list(map(str, _spec(leaf))),
                     "param_spec": list(map(str, pspec[path])),
                     "bytes_device_max": max(dev0.values()), "bytes": int(leaf.nbytes),
                     "param_bytes": int(pbytes[path])})
  momenta = []
  for path, leaf in tree_lib.leaves_with_paths(state.opt_state):
    if not hasattr(leaf, "sharding"):
      continue
    momenta.append({"path": path, "spec": list(map(str, _spec(leaf))), "shape": list(leaf.shape)})
  return {"rows": rows, "all": momenta,
          "params": {p: list(map(str, s)) for p, s in pspec.items()}}


def section_transforms() -> dict:
  out = {}
  batches = _batches(STEPS)
  for name, tx in _transforms().items():
    ref = _run(tx, batches=batches)
    res = {}
    for mname, (mesh, rules) in _meshes().items():
      st = _run(tx, mesh, rules, batches=batches)
      res[mname] = {"params": _compare(ref.params, st.params),
                    "model_state": _compare(ref.model_state, st.model_state),
                    "opt_state": _compare(ref.opt_state, st.opt_state),
                    "step": int(st.step), "specs": _state_specs(st)}
    # What the reference holds, to show the comparison is not vacuous.
    zeros = {}
    for _, st_type, field in _SPARSE_STATES:
      for s in optim.find_states(ref.opt_state, st_type):
        leaves = [np.asarray(l) for l in jax.tree.leaves(getattr(s, field))]
        if field == "ranks":  # the ranks chosen, and the full ranks
          zeros[field] = [[int(l) for l in leaves],
                          [min(trp_lib.matrix_shape(np.shape(p))) for path, p in
                           tree_lib.leaves_with_paths(ref.params)
                           if trp_lib.default_filter(path, p)]]
          continue
        n = sum(l.size for l in leaves)
        z = sum(int(np.sum(l == 0)) for l in leaves)
        zeros[field] = [z, n]
    res["reference_zeros"] = zeros
    out[name] = res
  return out


_COLLECTIVE = re.compile(
    r"=\s*(\(?[^=]*?\)?)\s+(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
    r"(-start)?\(")


def _collectives(compiled_text: str) -> list[dict]:
  out = []
  for line in compiled_text.splitlines():
    m = _COLLECTIVE.search(line)
    if m:
      shapes = re.findall(r"([a-z]+\d*)\[([\d,]*)\]", m.group(1))
      elems = [int(np.prod([int(d) for d in dims.split(",") if d] or [1])) for _, dims in shapes]
      out.append({"op": m.group(2), "elements": elems, "max_elements": max(elems or [0])})
  return out


def _lower_update(tx, mesh, rules):
  state, train_def, _ = train.create_train_state(_model(), tx, mesh=mesh, rules=rules)
  grads = jax.tree.map(lambda p: p * 0.01, state.params)
  f = jax.jit(tx.update)
  text = f.lower(grads, state.opt_state, state.params).compile().as_text()
  return _collectives(text), state


def section_hlo() -> dict:
  mesh, rules = _meshes()["data4_model2"]
  out = {}
  for name, tx in _transforms().items():
    colls, _ = _lower_update(tx, mesh, rules)
    out[name] = colls
  # A global threshold over sharded kernels by itself, and one per leaf.
  params = parallel.shard_params(
      nnx.as_pure(nnx.split(_model(), nnx.Param, ...)[1]), mesh, rules)
  for dist in ("global", "uniform"):
    f = jax.jit(lambda p, dist=dist: masks_lib.magnitude(p, 0.7, distribution=dist))
    out[f"masks_{dist}"] = _collectives(f.lower(params).compile().as_text())
    got = f(params)
    ref = masks_lib.magnitude(jax.device_get(params), 0.7, distribution=dist)
    out[f"masks_{dist}_equal"] = _compare(ref, got)["bool_mismatches"] == 0
  # An SVD step on a kernel split over "model": what is gathered.
  k = params["classifier"]["kernel"]
  f = jax.jit(lambda w: prox.nuclear(w, 0.1))
  out["svd_nuclear"] = {"shape": list(k.shape), "spec": list(map(str, _spec(k))),
                        "collectives": _collectives(f.lower(k).compile().as_text())}
  return out


def section_resume() -> dict:
  tx = optax.chain(
      optim.sparse_group_lasso(0.005, 2.5, num_examples=16.0, kind="l0"),
      optax.sgd(0.05, momentum=0.9),
      optim.network_slimming(0.05, 3.0, 1.0, xi_init=(0.0, 1.0)),
      optim.magnitude_pruning(0.7, begin_step=0, end_step=4, update_every=1,
                              distribution="global"))
  meshes = _meshes()
  batches = _batches(6, seed=1)
  mesh_a, rules_a = meshes["data8"]
  mesh_b, rules_b = meshes["data4_model2"]
  full = _run(tx, mesh_a, rules_a, steps=6, batches=batches)
  first = _run(tx, mesh_a, rules_a, steps=3, batches=batches)
  with tempfile.TemporaryDirectory() as d:
    manager = ckpt_lib.CheckpointManager(d)
    manager.save(3, first)
    manager.wait()
    target, train_def, _ = train.create_train_state(_model(), tx, mesh=mesh_b, rules=rules_b)
    restored = manager.restore_latest(target)
  target_specs = jax.tree.map(_spec, target)
  restored_specs = jax.tree.map(_spec, restored)
  out = {"restored_step": int(restored.step),
         "restored_equals_saved": _compare(first, restored),
         "restored_specs_match_target": target_specs == restored_specs,
         "restored_mask_specs": sorted({str(s) for s in jax.tree.leaves(
             jax.tree.map(_spec, optim.find_states(restored.opt_state,
                                                   optim.MagnitudePruningState)[0].masks),
             is_leaf=lambda x: isinstance(x, tuple))})}
  shardings = (jax.tree.map(lambda x: x.sharding, restored), parallel.batch_sharding(mesh_b))
  step = train.make_train_step(train_def, tx, shardings)
  state = restored
  for b in batches[3:6]:
    state, _ = step(state, parallel.make_global_batch(b, shardings[1], BATCH))
  out["continued_vs_uninterrupted"] = {
      "params": _compare(full.params, state.params),
      "opt_state": _compare(full.opt_state, state.opt_state),
      "step": int(state.step)}
  out["mask_zeros"] = int(sum(np.sum(~np.asarray(m)) for m in jax.tree.leaves(
      optim.find_states(state.opt_state, optim.MagnitudePruningState)[0].masks)))
  return out


def _final_params(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckdir = os.path.join(workdir, "checkpoints")
  step = max(int(s) for s in os.listdir(ckdir) if s.isdigit())
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(ckdir, str(step), "state"))
  return step, jax.device_get(tree["params"] if isinstance(tree, dict) else tree[1])


def section_trainer() -> dict:
  from fake_data import write_fake_mnist  # pylint: disable=g-import-not-at-top
  from test_train import _config  # pylint: disable=g-import-not-at-top
  out = {}
  with tempfile.TemporaryDirectory() as d:
    write_fake_mnist(d)

    def cfg(**kw):
      c = _config(d)
      c.num_epochs = 1  # 20 steps
      c.algorithm.begin_epoch = 0.1
      c.algorithm.end_epoch = 0.6
      c.algorithm.update_every_steps = 3
      c.checkpoint.every_steps = 100
      c.eval_batch_size = 200
      for k, v in kw.items():
        c[k] = v
      return c

    ref = train.train_and_evaluate(cfg(), os.path.join(d, "ref"))
    stopped = train.train_and_evaluate(cfg(mesh="data=-1", stop_after_steps=7),
                                       os.path.join(d, "run"))
    resumed = train.train_and_evaluate(
        cfg(mesh="data=4,model=2", sharding_rules="model_parallel"),
        os.path.join(d, "run"))
    ref_step, ref_params = _final_params(os.path.join(d, "ref"))
    run_step, run_params = _final_params(os.path.join(d, "run"))
    steps = [json.loads(l)["step"] for l in open(os.path.join(d, "run", "metrics.jsonl"))]
    out = {"stopped": stopped, "final_steps": [ref_step, run_step],
           "params": _compare(ref_params, run_params),
           "test_accuracy": [ref["test_accuracy"], resumed["test_accuracy"]],
           "sparsity": [ref["sparsity"], resumed["sparsity"]],
           "metrics_steps": steps}
    bad = cfg(mesh="data=3")
    try:
      train.train_and_evaluate(bad, os.path.join(d, "bad"))
      out["bad_mesh_error"] = None
    except ValueError as e:
      out["bad_mesh_error"] = str(e)
    bad = cfg(mesh="data=-1", batch_size=36)
    try:
      train.train_and_evaluate(bad, os.path.join(d, "bad2"))
      out["bad_batch_error"] = None
    except ValueError as e:
      out["bad_batch_error"] = str(e)
  return out


SECTIONS = {"transforms": section_transforms, "hlo": section_hlo, "resume": section_resume,
            "trainer": section_trainer}


def main(argv):
  names = argv[1:] or list(SECTIONS)
  result = {"devices": jax.device_count()}
  for n in names:
    result[n] = SECTIONS[n]()
  print("JSON:" + json.dumps(result))


if __name__ == "__main__":
  main(sys.argv)
