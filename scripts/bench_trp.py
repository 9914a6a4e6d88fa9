r"""Trained rank pruning on CIFAR-10 at CPU size, and the cost of its SVD steps.

  # the CPU-sized comparison (configs/resnet_cifar10_trp.py:cpu -- ResNet-20, 10,000 training
  # images, 20 epochs, the paper's TRP settings; dense, channel-wise, spatial-wise), about
  # 25 minutes per run, 75-80 minutes in all on 2 CPU cores:
  SPARSEJAX_DATA_DIR=../shared/data python scripts/bench_trp.py --workdir runs/bench_trp
  # a tiny check that everything runs (a few minutes):
  SPARSEJAX_DATA_DIR=../shared/data python scripts/bench_trp.py --workdir /tmp/bt \
      --epochs 1 --train-subset 256 --test-subset 256 --width 0.25 --batch-size 32 \
      --repeats 3 --step-batch-size 32
  python scripts/bench_trp.py --only step --repeats 20

Table 1 (``--only accuracy``): for each of dense / channel-wise / spatial-wise
TRP, one training run of the ``cpu`` recipe (flags override it), then the
trained model is decomposed with :func:`sparsejax.lowrank.export` (singular
values below ``--cut``, default the paper's 0.05, dropped; strided convs
factored too) and we report: test accuracy as trained (the low-rank model),
of the decomposed model, parameters and conv multiply-adds before/after with
their ratios (the paper counts conv FLOPs only; the final dense layer is not
decomposed), and the CPU latency of the jitted forward pass of the dense
and the exported models (median of interleaved repeats, at batch 1 and
``--latency-batch``). Runs go to ``--workdir/<variant>`` and resume if re-run;
the summary is ``--workdir/bench_trp.json``.

Table 2 (``--only step``): train-step time of ResNet-20 (``--width``, batch
``--step-batch-size``, CIFAR-shaped input) with TRP (both SVD passes every
step: period 1, channel- and spatial-wise) vs the plain optimizer (SGD
momentum 0.9 + weight decay), timed interleaved in one run so machine noise
hits them alike; the ratio is the SVD step's cost relative to an ordinary
step (with ``period = P`` the amortised cost is ``1 + (ratio - 1) / P``).

On a CPU shared with other jobs, ``OPENBLAS_NUM_THREADS=1`` can make the
LAPACK SVDs much faster (a lone 64x576 SVD: 2.4 ms instead of 20 ms under load
in our measurements); the table states the setting it ran with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from configs import resnet_cifar10_trp  # pylint: disable=wrong-import-position
from sparsejax import compact  # pylint: disable=wrong-import-position
from sparsejax import lowrank  # pylint: disable=wrong-import-position
from sparsejax import models  # pylint: disable=wrong-import-position
from sparsejax import pipelines  # pylint: disable=wrong-import-position
from sparsejax import train  # pylint: disable=wrong-import-position
from sparsejax._util import parse_list  # pylint: disable=wrong-import-position
from sparsejax.optim import trp  # pylint: disable=wrong-import-position

VARIANTS = ("dense", "channel", "spatial")
PAPER = {"dense": (91.74, 1.0), "channel": (90.50, 2.17), "spatial": (90.62, 2.84)}


def _widths(fraction: float) -> tuple[int, int, int]:
  return tuple(max(4, int(round(w * fraction))) for w in (16, 32, 64))


def _config(variant: str, args) -> ml_collections.ConfigDict:
  flags = ["cpu"] + {"dense": ["dense"], "channel": [], "spatial": ["spatial"]}[variant]
  c = resnet_cifar10_trp.get_config(",".join(flags))
  c.model.kwargs = dict(widths=_widths(args.width))
  c.data.train_subset = args.train_subset
  if args.test_subset:
    c.data.test_subset = args.test_subset
  c.batch_size = args.batch_size
  c.num_epochs = float(args.epochs)
  c.lr.boundaries_epochs = tuple(round(f * args.epochs, 3) for f in (81 / 164, 122 / 164))
  c.progress_bar = False
  c.seed = args.seed
  if variant != "dense":
    c.algorithm.cut = args.cut
    c.algorithm.energy = args.energy
  return c


def _run_name(variant: str, args) -> str:
  """Work-directory / row name: the variant, plus the energy when not the default 0.9."""
  if variant == "dense" or args.energy == 0.9:
    return variant
  return f"{variant}_e{args.energy:g}"


def _model(c, state) -> nnx.Module:
  model = models.get_model(c.model.name, num_classes=10, in_channels=3, rngs=nnx.Rngs(c.seed),
                           **dict(c.model.kwargs))
  nnx.update(model, state.params, state.model_state)
  model.eval()
  return model


def _test_set(c):
  return train.load_data(c, "test")


def _accuracy(model, ds, batch_size: int) -> float:
  model = nnx.clone(model)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return train.evaluate(train.make_eval_step(graphdef), nnx.as_pure(params), nnx.as_pure(rest),
                        ds, batch_size)["accuracy"]


def _forward(model):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  return lambda x: fn(state, x)


def _latencies(named_models: dict, batch: int, repeats: int) -> dict[str, float]:
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 32, 32, 3)), jnp.float32)
  fns = {k: _forward(m) for k, m in named_models.items()}
  for f in fns.values():
    for _ in range(2):
      jax.block_until_ready(f(x))
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f(x))
      times[k].append(time.perf_counter() - t)
  return {k: float(np.median(v)) for k, v in times.items()}


def bench_accuracy(args) -> list[dict]:
  os.makedirs(args.workdir, exist_ok=True)
  rows, exported = [], {}
  # Counts need only the shape; the export check runs on the values too (and on a
  # random input of its own), so the sample is not a constant image.
  sample = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)
  for variant in args.variants:
    c = _config(variant, args)
    name = _run_name(variant, args)
    workdir = os.path.join(args.workdir, name)
    t0 = time.time()
    report = train.train_and_evaluate(c, workdir)
    seconds = time.time() - t0
    state = pipelines.load_final_state(c, workdir)
    model = _model(c, state)
    before = compact.count(model, sample)
    conv_before = sum(l.flops for l in before.layers if l.name != "fc")
    row = dict(variant=name, scheme=variant, acc_trained=report["test_accuracy"], seconds=seconds,
               params_before=before.params, conv_flops_before=conv_before)
    if variant == "dense":
      exported[name] = model
      row.update(acc_exported=report["test_accuracy"], params_after=before.params,
                 conv_flops_after=conv_before, ranks={})
    else:
      new, rep = lowrank.export(model, sample, scheme=variant, cut=args.cut)
      exported[name] = new
      row.update(acc_exported=_accuracy(new, _test_set(c), c.eval_batch_size),
                 acc_cut_params=report.get("sparse_test_accuracy"),
                 params_after=rep["params_after"], conv_flops_after=rep["conv_flops_after"],
                 ranks={k: v["rank"] for k, v in rep["layers"].items()},
                 train_ranks={k: v["train_rank"] for k, v in report["trp"]["layers"].items()},
                 max_abs_diff_vs_low_rank=rep["max_abs_diff_vs_low_rank"])
    row["params_ratio"] = row["params_before"] / row["params_after"]
    row["conv_flops_ratio"] = row["conv_flops_before"] / row["conv_flops_after"]
    rows.append(row)
  lat1 = _latencies(exported, 1, args.repeats)
  latb = _latencies(exported, args.latency_batch, args.repeats)
  for row in rows:
    row["latency_ms_b1"] = 1e3 * lat1[row["variant"]]
    row[f"latency_ms_b{args.latency_batch}"] = 1e3 * latb[row["variant"]]

  print(f"\nResNet-20 (widths {_widths(args.width)}) on {args.train_subset} CIFAR-10 training "
        f"images, {args.epochs:g} epochs, batch {args.batch_size}, SGD momentum 0.9, lr 0.1 "
        f"x0.1 at {81 / 164:.0%} and {122 / 164:.0%} of training, wd 1e-4, augmentation; TRP "
        f"energy {args.energy:g}, nuclear 3e-4, period 1, decomposition cut {args.cut:g} "
        f"({jax.devices()[0].platform})")
  print(f"| variant | acc. as trained | acc. exported | params | conv MACs | conv FLOPs "
        f"reduction | latency b1 (ms) | latency b{args.latency_batch} (ms) | paper: acc. "
        f"/ FLOPs red. |\n|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    pa, pf = PAPER[r["scheme"]]
    print(f"| {r['variant']} | {r['acc_trained']:.4f} | {r['acc_exported']:.4f} | "
          f"{r['params_after']:,} ({r['params_ratio']:.2f}x) | {r['conv_flops_after']:,} | "
          f"{r['conv_flops_ratio']:.2f}x | {r['latency_ms_b1']:.2f} | "
          f"{r[f'latency_ms_b{args.latency_batch}']:.1f} | {pa:.2f}% / {pf:.2f}x |")
  suffix = "" if args.energy == 0.9 else f"_e{args.energy:g}"
  with open(os.path.join(args.workdir, f"bench_trp{suffix}.json"), "w") as f:
    json.dump({"args": vars(args), "rows": rows}, f, indent=2)
  return rows


def bench_step(args) -> dict[str, float]:
  rng = np.random.default_rng(0)
  b = args.step_batch_size
  batch = {"image": jnp.asarray(rng.normal(size=(b, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, size=b), jnp.int32)}
  sgd = lambda: optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))  # noqa: E731
  variants = {
      "plain SGD": sgd(),
      "TRP channel-wise (2 SVD passes)": trp.trp_chain(sgd(), scheme="channel"),
      "TRP spatial-wise (2 SVD passes)": trp.trp_chain(sgd(), scheme="spatial"),
      "truncation only, channel (1 SVD pass)": optax.chain(
          sgd(), trp.trained_rank_pruning(scheme="channel")),
  }
  times, _ = train.time_train_steps(
      variants, lambda: models.get_model("resnet20", widths=_widths(args.width), rngs=nnx.Rngs(0)),
      batch, args.repeats, warmup=2, verbose=True)
  base = float(np.median(times["plain SGD"]))
  print(f"\nResNet-20 (widths {_widths(args.width)}), batch {b}, train step, median of "
        f"{args.repeats} interleaved repeats ({jax.devices()[0].platform}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})")
  print("| variant | ms/step | ratio to plain SGD |\n|---|---|---|")
  out = {}
  for name in variants:
    med = float(np.median(times[name]))
    out[name] = med / base
    print(f"| {name} | {1e3 * med:.2f} | {med / base:.3f} |")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", choices=("accuracy", "step"), default=None)
  parser.add_argument("--workdir", default="runs/bench_trp")
  parser.add_argument("--epochs", type=float, default=20.0)
  parser.add_argument("--train-subset", type=int, default=10000)
  parser.add_argument("--test-subset", type=int, default=None, help="default: all 10,000")
  parser.add_argument("--width", type=float, default=1.0, help="fraction of ResNet-20's widths")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--cut", type=float, default=0.05, help="decomposition singular-value cut")
  parser.add_argument("--energy", type=float, default=0.9,
                      help="TRP training energy (the paper's 0.9; an older version of the "
                           "authors' training loop hard-codes 0.99)")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help="comma-separated subset of " + ", ".join(VARIANTS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=20, help="timed repeats per variant")
  parser.add_argument("--latency-batch", type=int, default=128)
  parser.add_argument("--step-batch-size", type=int, default=128)
  args = parser.parse_args()
  try:  # before the step benchmark and any training, not when the loop reaches the entry
    args.variants = parse_list("--variants", args.variants, allowed=VARIANTS)
  except ValueError as e:
    parser.error(str(e))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
  if args.only in (None, "step"):
    bench_step(args)
  if args.only in (None, "accuracy"):
    bench_accuracy(args)


if __name__ == "__main__":
  main()
