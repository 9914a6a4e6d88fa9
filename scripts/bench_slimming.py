r"""Network slimming on CIFAR-10 at CPU size, and the step-time cost of each transform.

  # the CPU-sized comparison (VGG-19 at 1/4 width, 5,000 training / 2,000 test images,
  # 48 epochs per method; BENCHMARKS.md's 48-epoch table):
  SPARSEJAX_DATA_DIR=../shared/data python scripts/bench_slimming.py --workdir runs/bench_slimming
  # a tiny check that everything runs (a minute or two):
  SPARSEJAX_DATA_DIR=../shared/data python scripts/bench_slimming.py --workdir /tmp/bs \
      --epochs 2 --train-subset 512 --test-subset 256 --width 0.0625 --batch-size 32 \
      --methods proximal,l1 --repeats 5
  python scripts/bench_slimming.py --only step --repeats 30

Table 1 (``--only accuracy``): the recipes of configs/vgg_cifar10_slimming.py (``cpu``
variant, with the flags' overrides), same total epochs for all:
  * proximal slimming: one run of ``--epochs`` epochs, no fine-tuning; the
    removed channels are those with ξ = 0. Its accuracy is reported as trained,
    with those channels deleted (BN scale and shift zeroed, what a real removal
    does) and with only γ zeroed (filters gone, each leaves a constant
    relu(shift) a compaction step could fold into the next layer);
  * classic slimming with the ℓ1, ℓp (p = 1/2) and Tℓ1 (a = 1) penalties (and
    MCP/SCAD on request): ``--epochs``/2 epochs with the penalty, prune by one
    global |γ| threshold, ``--epochs``/2 epochs of fine-tuning. By default the
    pruned fraction equals the fraction proximal slimming removed (equal
    channels removed; ``--prune-fraction`` sets it instead).
The last column is each run's own compaction (``report.json``'s ``compaction``):
for proximal slimming that is the model with the ξ = 0 scales zeroed
(:func:`sparsejax.optim.slimming.apply_sparse_scales`), which loses a channel
exactly when its shift is ≤ 0 as well (a positive shift makes it a constant
channel, which compaction keeps); for the classic pipelines the fine-tuned model.
Each run goes to ``--workdir/<method>`` and resumes if re-run; the summary is
``--workdir/bench_slimming.json``.

Table 2 (``--only step``): train-step time of the same model (VGG-19 at
``--width``, batch ``--batch-size``, CIFAR-shaped input) with each transform
vs the plain optimizer (SGD momentum 0.9 + weight decay), all variants timed
interleaved in one run so machine noise hits them alike.
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

from configs import vgg_cifar10_slimming  # pylint: disable=wrong-import-position
from sparsejax import models  # pylint: disable=wrong-import-position
from sparsejax import pipelines  # pylint: disable=wrong-import-position
from sparsejax import train  # pylint: disable=wrong-import-position
from sparsejax import tree as tree_lib  # pylint: disable=wrong-import-position
from sparsejax.optim import slimming  # pylint: disable=wrong-import-position

PENALTIES = ("l1", "lp", "tl1", "mcp", "scad")


def _widths(fraction: float):
  return [w if w == "M" else max(1, int(round(w * fraction)))
          for w in models.VGG_CONFIGS["vgg19"]]


def _config(method: str, args) -> ml_collections.ConfigDict:
  c = vgg_cifar10_slimming.get_config(f"{method},cpu")
  c.model.kwargs = dict(widths=_widths(args.width))
  c.data.train_subset = args.train_subset
  c.data.test_subset = args.test_subset or None  # 0: the whole test set
  c.batch_size = args.batch_size
  c.progress_bar = False
  c.seed = args.seed
  if method == "proximal":
    c.num_epochs = float(args.epochs)
    c.lr.boundaries_epochs = (0.5 * args.epochs, 0.75 * args.epochs)
    if args.s_proximal is not None:
      c.algorithm.s = args.s_proximal
  else:
    half = args.epochs / 2
    c.num_epochs = half
    c.lr.boundaries_epochs = (0.5 * half, 0.75 * half)
    c.pipeline.finetune.num_epochs = half
    c.pipeline.finetune.lr.boundaries_epochs = (0.5 * half, 0.75 * half)
    if args.s_penalty is not None:
      c.algorithm.s = args.s_penalty
  return c


def bench_accuracy(args) -> list[dict]:
  rows = []
  os.makedirs(args.workdir, exist_ok=True)
  methods = args.methods.split(",")
  unknown = set(methods) - {"proximal", *PENALTIES}
  if unknown:
    raise SystemExit(f"--methods: unknown {sorted(unknown)}; allowed: proximal, {', '.join(PENALTIES)}")
  match_fraction = None
  if "proximal" in methods:
    c = _config("proximal", args)
    workdir = os.path.join(args.workdir, "proximal")
    t0 = time.time()
    report = train.train_and_evaluate(c, workdir)
    state = pipelines.load_final_state(c, workdir)
    removable = {p: v.tolist() for p, v in slimming.removable_channels(state.opt_state).items()}
    deleted = pipelines.evaluate_state(c, state._replace(
        params=pipelines.prune_channels(state.params, removable)))
    gamma0 = pipelines.evaluate_state(c, state._replace(
        params=pipelines.prune_channels(state.params, removable, include_bias=False)))
    rc = report["removable_channels"]
    match_fraction = rc["removable"] / rc["channels"]
    rows.append(dict(method="proximal", epochs=f"{args.epochs:g} (no fine-tuning)",
                     removed=rc["removable"], channels=rc["channels"],
                     acc_trained=report["test_accuracy"], acc_pruned=deleted["accuracy"],
                     acc_gamma_zeroed=gamma0["accuracy"], acc_final=deleted["accuracy"],
                     **_compacted(report),
                     per_layer={p: l["removable"] for p, l in rc["layers"].items()},
                     seconds=time.time() - t0))
  fraction = args.prune_fraction
  if fraction is None:
    fraction = match_fraction if match_fraction else 0.7
    if match_fraction == 0:
      print("proximal slimming removed no channel; the pipelines prune 70% instead", flush=True)
  for method in methods:
    if method == "proximal":
      continue
    c = _config(method, args)
    c.pipeline.prune_fraction = float(fraction)
    t0 = time.time()
    result = pipelines.slimming_pipeline(c, os.path.join(args.workdir, method))
    label = {"lp": "ℓp (p = 1/2)", "tl1": "Tℓ1 (a = 1)", "l1": "ℓ1"}.get(method, method)
    rows.append(dict(method=f"classic {label}",
                     epochs=f"{args.epochs / 2:g} + {args.epochs / 2:g} fine-tuning",
                     removed=result["pruned_channels"], channels=result["channels"],
                     acc_trained=result["train"]["test_accuracy"],
                     acc_pruned=result["pruned_test_accuracy"], acc_gamma_zeroed=None,
                     acc_final=result["test_accuracy"],
                     **_compacted(result["finetune"] or {}),
                     per_layer={p: len(v) for p, v in result["pruned"].items()},
                     seconds=time.time() - t0))
  print(f"\nVGG-19 at width x{args.width:g} on {args.train_subset} CIFAR-10 training images, "
        f"batch {args.batch_size}, {args.epochs:g} epochs in all per method")
  print("| method | epochs | channels removed | acc. as trained | acc. channels deleted "
        "| acc. γ zeroed only | final acc. | compacted: channels removed, acc., MACs ratio |"
        "\n|---|---|---|---|---|---|---|---|")
  for r in rows:
    g0 = "–" if r["acc_gamma_zeroed"] is None else f"{r['acc_gamma_zeroed']:.4f}"
    comp = ("–" if r.get("compacted_removed") is None else
            f"{r['compacted_removed']} ({r['compacted_removed'] / r['channels']:.1%}), "
            f"{r['acc_compacted']:.4f}, {r['compacted_flops_ratio']:.2f}x")
    print(f"| {r['method']} | {r['epochs']} | {r['removed']}/{r['channels']} "
          f"({r['removed'] / r['channels']:.1%}) | {r['acc_trained']:.4f} | {r['acc_pruned']:.4f} "
          f"| {g0} | {r['acc_final']:.4f} | {comp} |")
  with open(os.path.join(args.workdir, "bench_slimming.json"), "w") as f:
    json.dump({"args": vars(args), "rows": rows}, f, indent=2)
  return rows


def _compacted(report: dict) -> dict:
  """The run's own compaction (``config.compact``): channels removed exactly, accuracy, MACs ratio."""
  c = report.get("compaction")
  if not c:
    return {}
  return {"compacted_removed": c["removed_channel_groups"], "acc_compacted": c["test_accuracy"],
          "compacted_flops_ratio": c["flops_ratio"]}


def bench_step(args) -> None:
  rng = np.random.default_rng(0)
  b = args.batch_size
  batch = {"image": jnp.asarray(rng.normal(size=(b, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, size=b), jnp.int32)}
  sgd = lambda: optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))  # noqa: E731
  lr = optax.piecewise_constant_schedule(0.1, {10**6: 0.1})
  variants = {"plain SGD": sgd(),
              "network_slimming (last)": optax.chain(sgd(), slimming.network_slimming(
                  lr, 0.0045, 100.0))}
  for kind in PENALTIES:
    variants[f"slimming_penalty {kind} (before)"] = optax.chain(
        slimming.slimming_penalty(kind, 1e-4), sgd())
  model = models.get_model("vgg19", widths=_widths(args.width), rngs=nnx.Rngs(0))
  half = {p: list(range(0, leaf.shape[-1], 2)) for p, leaf in
          tree_lib.leaves_with_paths(nnx.state(model, nnx.Param))
          if tree_lib.bn_scales(p, leaf)}
  variants["channel_mask, half the channels (last)"] = optax.chain(
      sgd(), slimming.channel_mask(half))
  times, _ = train.time_train_steps(
      variants, lambda: models.get_model("vgg19", widths=_widths(args.width), rngs=nnx.Rngs(0)),
      batch, args.repeats, prepare_params=slimming.set_bn_scales)
  base = np.median(times["plain SGD"])
  print(f"\nVGG-19 at width x{args.width:g}, batch {b}, train step, median of {args.repeats} "
        f"interleaved repeats ({jax.devices()[0].platform})")
  print("| variant | ms/step | ratio to plain SGD |\n|---|---|---|")
  for name in variants:
    med = np.median(times[name])
    print(f"| {name} | {1e3 * med:.2f} | {med / base:.3f} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", choices=("accuracy", "step"), default=None)
  parser.add_argument("--workdir", default="runs/bench_slimming")
  parser.add_argument("--methods", default="proximal,l1,lp,tl1",
                      help="comma-separated: proximal and any of " + ",".join(PENALTIES))
  parser.add_argument("--epochs", type=float, default=48.0, help="total epochs per method")
  parser.add_argument("--train-subset", type=int, default=5000)
  parser.add_argument("--test-subset", type=int, default=2000, help="0: all 10,000")
  parser.add_argument("--width", type=float, default=0.25, help="fraction of VGG-19's widths")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--prune-fraction", type=float, default=None,
                      help="default: the fraction proximal slimming removed")
  parser.add_argument("--s-proximal", type=float, default=None, help="default: the cpu config's")
  parser.add_argument("--s-penalty", type=float, default=None, help="default: the cpu config's")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=30, help="timed steps per variant")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
  if args.only in (None, "step"):
    bench_step(args)
  if args.only in (None, "accuracy"):
    bench_accuracy(args)


if __name__ == "__main__":
  main()
