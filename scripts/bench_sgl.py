r"""LeNet-5 on MNIST: sparse group lasso (l0, l1, tl1, lhalf) vs dense vs magnitude pruning.

Full run (the paper's 200 epochs for every variant; ~10-11 hours on 2 idle
CPU cores, about 1 h 45 min per variant at ~32 s/epoch, six variants, plus
~1 minute of step timing):

  SPARSEJAX_DATA_DIR=/work/shared/data python scripts/bench_sgl.py --epochs 200

Shortened (20 epochs, every epoch boundary scaled by 1/10; ~1 hour):

  SPARSEJAX_DATA_DIR=/work/shared/data python scripts/bench_sgl.py --epochs 20

A finished full run (``scripts/train.py --config configs/lenet5_mnist_sgl.py``) with
W's entries below each threshold set to zero, sparsity and test accuracy (~1 minute):

  SPARSEJAX_DATA_DIR=/work/shared/data python scripts/bench_sgl.py --analyze-run runs/sgl_l0_full

Tiny check that the script works (~1-2 minutes):

  SPARSEJAX_DATA_DIR=/work/shared/data python scripts/bench_sgl.py --epochs 1 \
      --train-subset 2000 --test-subset 500 --repeats 5

Training table. Every variant runs through ``sparsejax.train.train_and_evaluate``
with the recipe of ``configs/lenet5_mnist_sgl.py`` (Adam 1e-3 without weight
decay, batch 100, lr x0.1 at 20/40/60/80% of the epochs) for the same number
of epochs:

* ``dense``: no penalty.
* ``magnitude_pruning``: gradual magnitude pruning (one global threshold over
  the four kernels, cubic ramp from 10% to 50% of training) to the sparsity
  that SGL-l0 reached (the first SGL kind run when l0 is not among them): of
  W counted the authors' way (|w| < 1e-5), the model whose accuracy the paper
  reports (row ``magnitude_pruning_w``); ``--magnitude-target u`` uses U's
  exact sparsity instead (row ``magnitude_pruning_u``), ``--magnitude-sparsity S``
  the given sparsity (row ``magnitude_pruning``; ``--kinds ''`` runs no SGL kind).
* ``sgl_<kind>``: the sparse group lasso (lambda 0.1, beta_0 2.5 x1.25 every
  20% of the epochs on the conv layers, N = 60000), for each kind.

Columns: test accuracy of W (what the authors report) and of U (exact zeros);
weight sparsity over the four kernels of U (exact) and of W the authors' way
(|w| < 1e-5); zero groups per layer (conv1/conv2 output channels, fc1/fc2
input neurons) of U, with W's (authors' way: mean |w| of a group <= 1e-5) in
parentheses; remaining multiply-adds of the network compacted to its live
channels (a channel is live when its producing filter and its consumer's input
slice both have a nonzero; counted here for LeNet-5 until
``sparsejax.compact.count`` exists) as a fraction of the dense 2,293,000.
Rows without a U (dense, magnitude pruning) use W's exact zeros.

Step table: one jitted train step (LeNet-5, batch 100, MNIST-shaped input) of
Adam alone, SGL + Adam and Adam + ``proximal``, timed interleaved in one run so
machine noise hits all alike; the ratio is to plain Adam.

Each variant writes its run into ``<workdir>/e<epochs>_<variant>`` and resumes
from its checkpoints when rerun; results go to ``<workdir>/bench_sgl_e<epochs>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import lenet5_mnist_sgl  # pylint: disable=wrong-import-position
from sparsejax import models  # pylint: disable=wrong-import-position
from sparsejax import prox  # pylint: disable=wrong-import-position
from sparsejax import train  # pylint: disable=wrong-import-position
from sparsejax._util import parse_list  # pylint: disable=wrong-import-position
from sparsejax import tree as tree_lib  # pylint: disable=wrong-import-position
from sparsejax.optim import group_lasso  # pylint: disable=wrong-import-position
from sparsejax.optim.proximal_gradient import proximal  # pylint: disable=wrong-import-position

KERNELS = ("conv1/kernel", "conv2/kernel", "fc1/kernel", "fc2/kernel")
EPS = group_lasso.AUTHORS_EPS


# ----------------------------------------------------------------------------
# LeNet-5 structure: live channels and multiply-adds
# ----------------------------------------------------------------------------


def lenet5_macs(k: dict[str, np.ndarray], input_hw: int = 28) -> dict:
  """Multiply-adds of LeNet-5 compacted to its live channels.

  ``k`` maps the four kernel paths to arrays (conv HWIO, dense (in, out)).
  A channel (conv output channel, fc1 input position, fc1 output neuron) is
  live when it is computed from live inputs with a nonzero weight *and* some
  live consumer reads it with a nonzero weight; a dead channel's constant
  output (relu of its bias) folds into the consumer's bias. Liveness is
  propagated forward (producers) and then backward (consumers).
  """
  c1, c2, f1, f2 = (np.asarray(k[p]) != 0 for p in KERNELS)
  kh1, kw1 = c1.shape[:2]
  kh2, kw2 = c2.shape[:2]
  s1 = input_hw - kh1 + 1           # conv1 output side (VALID)
  s2 = s1 // 2 - kh2 + 1            # conv2 output side after the 2x2 pool
  flat = (s2 // 2) ** 2             # spatial positions feeding fc1
  n2 = c2.shape[-1]
  # Forward: a unit is computed from something.
  fw1 = c1.any(axis=(0, 1, 2))
  fw2 = c2[:, :, fw1, :].any(axis=(0, 1, 2))
  fw_in = np.tile(fw2, flat)        # NHWC flatten: the channel index runs fastest
  fw3 = f1[fw_in].any(axis=0)
  # Backward: a unit is read by a live consumer.
  live3 = fw3 & f2.any(axis=1)
  live_in = fw_in & f1[:, live3].any(axis=1)
  live2 = fw2 & live_in.reshape(flat, n2).any(axis=0)
  live1 = fw1 & c2[:, :, :, live2].any(axis=(0, 1, 3))
  # One pass each way is enough: a live unit reads a forward-live input with a
  # nonzero weight, and that input is then read by a live unit, so it stays live.
  n_c1, n_c2, n_in, n_h = int(live1.sum()), int(live2.sum()), int(live_in.sum()), int(live3.sum())
  macs = {
      "conv1": s1 * s1 * kh1 * kw1 * c1.shape[2] * n_c1,
      "conv2": s2 * s2 * kh2 * kw2 * n_c1 * n_c2,
      "fc1": n_in * n_h,
      "fc2": n_h * f2.shape[1],
  }
  return {"macs": macs, "total": sum(macs.values()),
          "live": {"conv1": n_c1, "conv2": n_c2, "fc1_in": n_in, "fc2_in": n_h}}


def _zero_groups(x: np.ndarray, axis: int, *, authors: bool) -> int:
  g = np.moveaxis(np.abs(x), axis, 0).reshape(x.shape[axis], -1)
  return int(np.sum(g.mean(axis=1) <= EPS) if authors else np.sum(~np.any(g != 0, axis=1)))


def _kernels(params) -> dict[str, np.ndarray]:
  flat = dict(tree_lib.leaves_with_paths(params))
  return {p: np.asarray(jax.device_get(flat[p])) for p in KERNELS}


def structure_row(u: dict[str, np.ndarray], w: dict[str, np.ndarray] | None) -> dict:
  """Sparsity, zero groups and MACs of U (and of W the authors' way)."""
  n = sum(x.size for x in u.values())
  row = {"sparsity_u": sum(int((x == 0).sum()) for x in u.values()) / n,
         "zero_groups_u": {p: _zero_groups(x, group_lasso.group_axis(x), authors=False)
                           for p, x in u.items()},
         "groups": {p: x.shape[group_lasso.group_axis(x)] for p, x in u.items()},
         "flops_u": lenet5_macs(u)}
  if w is not None:
    w_auth = {p: np.where(np.abs(x) < EPS, 0.0, x) for p, x in w.items()}
    row["sparsity_w_authors"] = sum(int((np.abs(x) < EPS).sum()) for x in w.values()) / n
    row["zero_groups_w_authors"] = {p: _zero_groups(x, group_lasso.group_axis(x), authors=True)
                                    for p, x in w.items()}
    row["flops_w_authors"] = lenet5_macs(w_auth)
  return row


# ----------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def capturing(name: str, builder):
  """Registers ``builder`` under ``name`` with its report wrapped to keep the final state."""
  captured = {}

  def wrapped(cfg, ctx):
    alg = builder(cfg, ctx)

    def report(params, opt_state):
      captured["params"], captured["opt_state"] = params, opt_state
      return alg.report(params, opt_state) if alg.report else {}
    return alg._replace(report=report)

  old = train.ALGORITHMS.get(name)
  train.ALGORITHMS[name] = wrapped
  try:
    yield captured
  finally:
    if old is None:
      del train.ALGORITHMS[name]
    else:
      train.ALGORITHMS[name] = old


def base_config(args, kind: str = "l0"):
  """The SGL LeNet-5 recipe with every epoch boundary scaled to ``args.epochs``."""
  c = lenet5_mnist_sgl.get_config(kind)
  e = args.epochs
  c.num_epochs = e
  c.lr.boundaries_epochs = tuple(f * e for f in (0.2, 0.4, 0.6, 0.8))
  c.algorithm.growth_every_epochs = 0.2 * e
  c.progress_bar = False
  c.seed = args.seed
  if args.data_dir:
    c.data.dir = args.data_dir
  c.data.train_subset = args.train_subset
  c.data.test_subset = args.test_subset
  return c


def _u_evaluator(args, config):
  """Evaluates a params tree on the (subset of the) test split."""
  test = train.load_data(config, "test")  # the trainer's test set
  model = models.get_model("lenet5", num_classes=10, rngs=nnx.Rngs(0))
  state, _, eval_def = train.create_train_state(model, optax.identity())
  eval_step = train.make_eval_step(eval_def)
  # LeNet-5 has no batch statistics: a fresh model_state is the trained one.
  return lambda params: train.evaluate(eval_step, params, state.model_state, test, 1000)


def run_variant(args, name: str, config, algo_name: str, builder, evaluate_u):
  workdir = os.path.join(args.workdir, f"e{args.epochs:g}_{name}")
  print(f"\n=== {name}: {config.num_epochs:g} epochs -> {workdir}", flush=True)
  with capturing(algo_name, builder) as cap:
    report = train.train_and_evaluate(config, workdir)
  params, opt_state = cap["params"], cap["opt_state"]
  row = {"variant": name, "test_accuracy_w": report["test_accuracy"],
         "seconds_per_epoch": report["seconds_per_epoch"], "wall_seconds": report["wall_seconds"],
         "dataset_source": report["dataset_source"]}
  if algo_name == "sparse_group_lasso":
    u_params = group_lasso.sparse_params(opt_state, params)
    row["test_accuracy_u"] = evaluate_u(u_params)["accuracy"]
    row.update(structure_row(_kernels(u_params), _kernels(params)))
  else:
    row.update(structure_row(_kernels(params), None))
  return row


def bench_training(args) -> list[dict]:
  rows = []
  kinds = [k for k in args.kinds.split(",") if k]
  cfg0 = base_config(args)
  evaluate_u = _u_evaluator(args, cfg0)
  for kind in kinds:
    rows.append(run_variant(args, f"sgl_{kind}", base_config(args, kind), "sparse_group_lasso",
                            group_lasso.sparse_group_lasso_from_config, evaluate_u))
  sgl = {r["variant"]: r for r in rows}
  ref = sgl.get("sgl_l0") or (rows[0] if rows else None)
  if "dense" in args.baselines:
    c = base_config(args)
    c.algorithm = ml_collections.ConfigDict(dict(name="none"))
    rows.append(run_variant(args, "dense", c, "none", train.ALGORITHMS["none"], evaluate_u))
  target = args.magnitude_sparsity
  if target is None and ref is not None:
    target = min(ref[f"sparsity_{args.magnitude_target}"], 0.999)
  if "magnitude" in args.baselines and target is not None:
    c = base_config(args)
    # Masks recomputed about every 1/10 epoch (every step on tiny runs).
    spe = max(1, (args.train_subset or 60000) // c.batch_size)
    c.algorithm = ml_collections.ConfigDict(dict(
        name="magnitude_pruning", sparsity=target,
        begin_epoch=0.1 * args.epochs, end_epoch=0.5 * args.epochs,
        update_every_steps=max(1, spe // 10), distribution="global", filter_regex=""))
    variant = ("magnitude_pruning" if args.magnitude_sparsity is not None else
               "magnitude_pruning_w" if args.magnitude_target == "w_authors" else
               "magnitude_pruning_u")
    rows.append(run_variant(args, variant, c, "magnitude_pruning",
                            train.ALGORITHMS["magnitude_pruning"], evaluate_u))
  return rows


def print_training(rows: list[dict], epochs: float) -> None:
  dense_macs = 2_293_000
  print(f"\nLeNet-5 / MNIST, {epochs:g} epochs each "
        f"(data: {rows[0]['dataset_source'] if rows else '?'})")
  print("| variant | test acc W | test acc U | sparsity U | sparsity W (authors) | "
        "zero groups U (W): conv1/20, conv2/50, fc1 in/800, fc2 in/500 | "
        "MACs left U | MACs left W | s/epoch |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    zu = r["zero_groups_u"]
    zw = r.get("zero_groups_w_authors")
    groups = ", ".join(f"{zu[p]}" + (f" ({zw[p]})" if zw else "") for p in KERNELS)
    acc_u = f"{100 * r['test_accuracy_u']:.2f}%" if "test_accuracy_u" in r else "—"
    sw = f"{100 * r['sparsity_w_authors']:.2f}%" if "sparsity_w_authors" in r else "—"
    fw = (f"{100 * r['flops_w_authors']['total'] / dense_macs:.1f}%"
          if "flops_w_authors" in r else "—")
    print(f"| {r['variant']} | {100 * r['test_accuracy_w']:.2f}% | {acc_u} | "
          f"{100 * r['sparsity_u']:.2f}% | {sw} | {groups} | "
          f"{100 * r['flops_u']['total'] / dense_macs:.1f}% | {fw} | "
          f"{r['seconds_per_epoch'] or float('nan'):.1f} |")


# ----------------------------------------------------------------------------
# A finished run's W under several zero thresholds
# ----------------------------------------------------------------------------


def analyze_run(args) -> list[dict]:
  """W of the newest checkpoint in ``args.analyze_run``, entries below each threshold zeroed.

  For every threshold t: the fraction of the four kernels' weights with |w| < t
  (t = 1e-5 is the authors' count), per layer and in all, and the test accuracy
  of W with exactly those entries set to zero.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  ckdir = os.path.join(os.path.abspath(args.analyze_run), "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckdir) if d.isdigit()) if os.path.isdir(ckdir) else []
  if not steps:
    raise SystemExit(f"--analyze-run: no checkpoint under {ckdir}")
  saved = ocp.StandardCheckpointer().restore(os.path.join(ckdir, str(steps[-1]), "state"))
  cfg = base_config(args)
  evaluate = _u_evaluator(args, cfg)
  params = models.get_model("lenet5", num_classes=10, rngs=nnx.Rngs(0))
  params = nnx.state(params, nnx.Param)
  params.replace_by_pure_dict(saved["params"])
  w = _kernels(params)
  n = sum(x.size for x in w.values())
  thresholds = [float(t) for t in args.thresholds.split(",")]
  rows = []
  print(f"\n{args.analyze_run}: step {steps[-1]}, W with |w| < t set to zero")
  print("| t | zero weights | " + " | ".join(KERNELS) + " | test acc |")
  print("|---|---|" + "---|" * len(KERNELS) + "---|")
  for t in [0.0] + thresholds:
    keep = {k: np.abs(x) >= t for k, x in w.items()}  # t = 0 keeps everything

    def zero_below(path, x, keep=keep):
      mask = keep.get(tree_lib.path_str(path))
      return x if mask is None else jnp.where(mask, x, 0.0)

    pruned = jax.tree_util.tree_map_with_path(zero_below, params)
    acc = evaluate(pruned)["accuracy"]
    per = {k: 1.0 - float(keep[k].mean()) for k in KERNELS}
    total = 1.0 - sum(int(keep[k].sum()) for k in KERNELS) / n
    rows.append({"threshold": t, "sparsity": total, "per_layer": per, "test_accuracy": acc})
    print(f"| {t:g} | {100 * total:.2f}% | " + " | ".join(f"{100 * per[k]:.1f}%" for k in KERNELS)
          + f" | {100 * acc:.2f}% |")
  return rows


# ----------------------------------------------------------------------------
# Step time
# ----------------------------------------------------------------------------


def bench_step(repeats: int, batch_size: int = 100) -> dict:
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(batch_size, 28, 28, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, size=batch_size), jnp.int32)}
  adam = optax.adam(1e-3)
  sgl = functools.partial(group_lasso.sparse_group_lasso, 0.1, 2.5, num_examples=60000,
                          growth_every=24000)
  variants = {
      "Adam": adam,
      "SGL-l0 + Adam": optax.chain(sgl(kind="l0"), adam),
      "SGL-tl1 + Adam": optax.chain(sgl(kind="tl1"), adam),
      "SGL-lhalf + Adam": optax.chain(sgl(kind="lhalf"), adam),
      "Adam + proximal(l1)": optax.chain(adam, proximal(prox.l1, 1e-4, 1e-3)),
      "Adam + proximal(group_l2)": optax.chain(
          adam, proximal(prox.group_l2, 1e-4, 1e-3)),
  }
  times, _ = train.time_train_steps(
      variants, lambda: models.get_model("lenet5", rngs=nnx.Rngs(0)), batch, repeats)
  base = float(np.median(times["Adam"]))
  print(f"\nLeNet-5 train step, batch {batch_size}, median of {repeats} interleaved repeats")
  print("| variant | ms/step | ratio to Adam |\n|---|---|---|")
  out = {}
  for name in variants:
    med = float(np.median(times[name]))
    out[name] = {"ms": 1e3 * med, "ratio": med / base}
    print(f"| {name} | {1e3 * med:.2f} | {med / base:.3f} |")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", type=float, default=200)
  parser.add_argument("--train-subset", type=int, default=None)
  parser.add_argument("--test-subset", type=int, default=None)
  parser.add_argument("--kinds", default="l0,l1,tl1,lhalf")
  parser.add_argument("--baselines", default="dense,magnitude")
  parser.add_argument("--workdir", default="runs/bench_sgl")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--only", choices=("train", "step"), default=None)
  parser.add_argument("--repeats", type=int, default=50)
  parser.add_argument(
      "--magnitude-target", choices=("w_authors", "u"), default="w_authors",
      help="sparsity the magnitude-pruning baseline is pruned to: SGL-l0's W counted the authors' "
           "way (the model whose accuracy the paper reports; default) or its U")
  parser.add_argument(
      "--magnitude-sparsity", type=float, default=None,
      help="prune the magnitude baseline to this sparsity instead, in [0, 1) (e.g. a full SGL "
           "run's, with --kinds '' to skip the SGL rows)")
  parser.add_argument(
      "--analyze-run", default=None, metavar="WORKDIR",
      help="instead of benchmarking: zero W of a finished scripts/train.py SGL run at each of "
           "--thresholds and print sparsity and test accuracy")
  parser.add_argument("--thresholds", default="1e-5,1e-4,1e-3,1e-2,3e-2,1e-1")
  args = parser.parse_args()
  if args.analyze_run:
    print(json.dumps(analyze_run(args)))
    return
  if args.magnitude_sparsity is not None and not 0.0 <= args.magnitude_sparsity < 1.0:
    parser.error(f"--magnitude-sparsity must be in [0, 1), got {args.magnitude_sparsity}")
  try:  # checked before hours of training, not when the loop reaches the entry
    args.kinds = ",".join(parse_list("--kinds", args.kinds, allowed=lenet5_mnist_sgl.KINDS,
                                     allow_empty=True))
    args.baselines = parse_list("--baselines", args.baselines, allowed=("dense", "magnitude"),
                                allow_empty=True)
  except ValueError as e:
    parser.error(str(e))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
  os.makedirs(args.workdir, exist_ok=True)
  results = {"args": vars(args)}
  if args.only in (None, "step"):
    results["step"] = bench_step(args.repeats)
  if args.only in (None, "train"):
    rows = bench_training(args)
    results["train"] = rows
    print_training(rows, args.epochs)
  path = os.path.join(args.workdir, f"bench_sgl_e{args.epochs:g}.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  print(f"\nresults: {path}")


if __name__ == "__main__":
  main()
