"""One process of a two-process (multi-host) sharded training check.

``tests/test_parallel.py`` starts this file twice, as processes 0 and 1 of a
``jax.distributed`` cluster on this machine (CPU, gloo collectives, 4 fake
devices each, 8 in all), and compares what they write with an unsharded run:

  python tests/multihost_check.py PROCESS_ID PORT DATA_DIR OUT_DIR

Each process loads only its own rows of every global batch
(``parallel.process_train_batches``), joins them into global arrays
(``parallel.make_global_batch``) and runs the sharded train step of LeNet-5
with ``magnitude_pruning`` (global threshold) for ``STEPS`` steps, first on a
``data=8`` mesh, then on ``data=4 x model=2`` with the model-parallel rules;
then runs ``train.train_and_evaluate`` (the smoke config of the trainer
tests, one epoch, ``data=4 x model=2``) in ``OUT_DIR/run``.
Outputs in ``OUT_DIR``: ``rows_<pid>.npz`` (the labels this process fed, per
step), ``report_<pid>.json`` (what the trainer returned there) and, from
process 0, ``<mesh>.npz`` with the final params and masks gathered from both
processes.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sparsejax import data as data_lib  # pylint: disable=wrong-import-position
from sparsejax import models
from sparsejax import optim
from sparsejax import parallel
from sparsejax import train
from sparsejax import tree as tree_lib

STEPS = 6
BATCH = 32
SEED = 3


def make_tx():
  return optax.chain(
      optax.sgd(0.05, momentum=0.9),
      optim.magnitude_pruning(0.8, begin_step=0, end_step=4, update_every=2,
                              distribution="global"))


def make_model():
  return models.get_model("lenet5", rngs=nnx.Rngs(0))


def flat(tree) -> dict[str, np.ndarray]:
  return {p: np.asarray(v) for p, v in tree_lib.leaves_with_paths(tree) if v is not None}


def main(pid: int, port: int, data_dir: str, out_dir: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=pid)
  assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(),
                                                                jax.device_count())
  ds = data_lib.load("mnist", "train", data_dir=data_dir)
  tx = make_tx()
  rows = {}
  for name, axes, rules in (("data8", "data=-1", ()),
                            ("data4_model2", "data=4,model=2", parallel.MODEL_PARALLEL_RULES)):
    mesh = parallel.make_mesh(axes)
    state, train_def, _ = train.create_train_state(make_model(), tx, mesh=mesh, rules=rules)
    bs = parallel.batch_sharding(mesh)
    step = train.make_train_step(train_def, tx, (jax.tree.map(lambda x: x.sharding, state), bs))
    local = parallel.process_train_batches(ds, sharding=bs, batch_size=BATCH, seed=SEED)
    labels = []
    for _ in range(STEPS):
      b = next(local)
      labels.append(np.asarray(b["label"]))
      state, _ = step(state, parallel.make_global_batch(b, bs, BATCH))
    rows[name] = np.stack(labels)
    params = multihost_utils.process_allgather(state.params, tiled=True)
    masks = optim.find_states(state.opt_state, optim.MagnitudePruningState)[0].masks
    masks = multihost_utils.process_allgather(masks, tiled=True)
    if pid == 0:
      out = {f"params/{k}": v for k, v in flat(params).items()}
      out.update({f"masks/{k}": v for k, v in flat(masks).items()})
      np.savez(os.path.join(out_dir, f"{name}.npz"), **out)
  np.savez(os.path.join(out_dir, f"rows_{pid}.npz"), **rows)

  # The trainer end to end: 20 steps on data=4 x model=2, both processes.
  from test_train import _config  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  c = _config(data_dir, num_epochs=1, mesh="data=4,model=2", sharding_rules="model_parallel",
              **{"algorithm.end_epoch": 1.0})
  report = train.train_and_evaluate(c, os.path.join(out_dir, "run"))
  with open(os.path.join(out_dir, f"report_{pid}.json"), "w") as f:
    json.dump({k: report[k] for k in ("test_accuracy", "sparsity", "params_sha256")}, f)
  multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
