r"""RARTS vs first- and second-order DARTS at CPU size: search cost, memory, derived networks.

  # the size reported in BENCHMARKS.md (22 minutes on 2 busy CPU cores: searches 13, training 8):
  SPARSEJAX_DATA_DIR=../shared/data python scripts/bench_search.py --workdir /tmp/bench_search
  # a check that everything runs (a few minutes):
  SPARSEJAX_DATA_DIR=../shared/data python scripts/bench_search.py --workdir /tmp/bs \
      --cells 3 --steps 1 --subset 128 --epochs 1 --eval-epochs 1 --eval-subset 256

What it does, all in one process:

1. Builds one search per variant (default: ``rarts`` -- the Gauss-Seidel sweep
   of ALGORITHMS.md section 4 --, ``rarts-jacobi`` -- our cheaper variant with
   the architecture gradient taken from the weight passes --, ``darts-1``,
   ``darts-2`` -- finite-difference Hessian term, xi = the weights' learning
   rate) from ``configs/{rarts,darts}_cifar10.py:cpu`` with the sizes of the
   flags: the same seeded half split of the same CIFAR-10 subset, the same
   initial weights and logits, the DARTS optimizers (SGD 0.025 cosine to 0.001,
   momentum 0.9, wd 3e-4, clip 5; Adam betas (0.5, 0.999), wd 1e-3) except the
   architecture learning rate (``--alpha-lr``, default 3e-3 = 10x DARTS's, so
   that a search of a few dozen steps moves the logits by more than their
   initial noise).
2. Compiles the network's forward-backward pass once (``compile="pass"``),
   shared by every variant, and runs the searches' epochs interleaved (variant
   order rotated each epoch) so that machine load hits them alike. Reported per
   variant: gradient passes per step, seconds per epoch (steps per epoch times
   the median step time, first step left out), the ratio to ``darts-2``, the
   step's peak device bytes and the search state's bytes (see
   ``sparsejax/search/run.py``), the final epoch's accuracy on the two halves,
   and the derived genotype.
3. Trains each derived network with the same short recipe
   (``configs/genotype_cifar10.py:cpu`` with the ``--eval-*`` sizes) and reports
   its test accuracy (on ``--eval-test-subset`` test images) and parameters.

Prints a markdown table and writes ``--workdir/bench_search.json``. The CPU
sizes make the genotypes and accuracies anecdotes (one seed, a small subset,
tiny networks); the per-epoch costs and memory are the measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=wrong-import-position

from configs import darts_cifar10  # pylint: disable=wrong-import-position
from configs import genotype_cifar10  # pylint: disable=wrong-import-position
from configs import rarts_cifar10  # pylint: disable=wrong-import-position
from sparsejax import search  # pylint: disable=wrong-import-position
from sparsejax import train  # pylint: disable=wrong-import-position
from sparsejax._util import parse_list  # pylint: disable=wrong-import-position

VARIANTS = {
    "rarts": (rarts_cifar10, "cpu"),
    "rarts-jacobi": (rarts_cifar10, "cpu,jacobi"),
    "darts-1": (darts_cifar10, "cpu"),
    "darts-2": (darts_cifar10, "cpu,second_order"),
}
_SHORT = {"none": "none", "max_pool_3x3": "max", "avg_pool_3x3": "avg", "skip_connect": "skip",
          "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5", "dil_conv_3x3": "dil3",
          "dil_conv_5x5": "dil5"}


def _args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--variants", default=",".join(VARIANTS),
                  help=f"comma-separated, from {list(VARIANTS)}")
  ap.add_argument("--data-dir", default=None, help="npz directory (default $SPARSEJAX_DATA_DIR)")
  ap.add_argument("--cells", type=int, default=3)
  ap.add_argument("--channels", type=int, default=8)
  ap.add_argument("--steps", type=int, default=4, help="intermediate nodes per cell")
  ap.add_argument("--subset", type=int, default=640, help="training images, halved")
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--epochs", type=int, default=2)
  ap.add_argument("--alpha-lr", type=float, default=3e-3)
  ap.add_argument("--lam", type=float, default=1.0)
  ap.add_argument("--beta", type=float, default=1.0)
  ap.add_argument("--eval-cells", type=int, default=5)
  ap.add_argument("--eval-widths", default="8,16,32")
  ap.add_argument("--eval-subset", type=int, default=2000)
  ap.add_argument("--eval-test-subset", type=int, default=2000)
  ap.add_argument("--eval-epochs", type=float, default=3.0)
  ap.add_argument("--eval-batch-size", type=int, default=64)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  bad = [v for v in args.variants.split(",") if v not in VARIANTS]
  if bad:
    ap.error(f"--variants: unknown {bad}; allowed: {list(VARIANTS)}")
  try:  # parsed before the searches run, not after them
    args.eval_widths = parse_list("--eval-widths", args.eval_widths, int, low=1)
  except ValueError as e:
    ap.error(str(e))
  if len(args.eval_widths) != 3:
    ap.error(f"--eval-widths needs 3 stage widths, got {args.eval_widths}")
  for flag in ("cells", "channels", "steps", "subset", "batch_size", "epochs", "eval_cells",
               "eval_subset", "eval_test_subset", "eval_batch_size"):
    if getattr(args, flag) < 1:
      ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
  if not args.eval_epochs > 0:
    ap.error(f"--eval-epochs must be > 0, got {args.eval_epochs}")
  return args


def search_config(variant: str, args):
  module, arg = VARIANTS[variant]
  c = module.get_config(arg)
  c.seed = args.seed
  c.data.dir = args.data_dir
  c.data.train_subset = args.subset
  c.model.num_cells = args.cells
  c.model.channels = args.channels
  c.model.steps = args.steps
  c.model.multiplier = args.steps
  c.batch_size = args.batch_size
  c.num_epochs = args.epochs
  c.arch_optimizer.lr = args.alpha_lr
  c.search.lam = args.lam
  c.search.beta = args.beta
  c.compile = "pass"
  return c


def eval_config(genotype_path: str, args):
  c = genotype_cifar10.get_config("cpu")
  c.seed = args.seed
  c.data.dir = args.data_dir
  c.data.train_subset = args.eval_subset
  c.data.test_subset = args.eval_test_subset
  c.model.kwargs.genotype = genotype_path
  c.model.kwargs.num_cells = args.eval_cells
  c.model.kwargs.widths = tuple(args.eval_widths)
  c.num_epochs = args.eval_epochs
  c.batch_size = args.eval_batch_size
  c.progress_bar = False
  return c


def short_genotype(g: dict) -> str:
  cell = lambda edges: " ".join(f"{_SHORT[op]}<{j}" for op, j in edges)  # noqa: E731
  return f"N: {cell(g['normal'])} / R: {cell(g['reduce'])}"


def main(argv=None):
  args = _args(argv)
  variants = args.variants.split(",")
  os.makedirs(args.workdir, exist_ok=True)
  t0 = time.time()
  print(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cpus", flush=True)

  # --- searches, interleaved ----------------------------------------------------
  configs = {v: search_config(v, args) for v in variants}
  halves = search.load_halves(configs[variants[0]])
  cache: dict = {}
  searches = {}
  for v in variants:
    searches[v] = search.Search(configs[v], os.path.join(args.workdir, v), halves=halves,
                                pass_cache=cache)
    print(searches[v].describe(), flush=True)
  for epoch in range(args.epochs):
    order = variants[epoch % len(variants):] + variants[:epoch % len(variants)]
    for v in order:
      r = searches[v].run_epoch()
      print(f"[{time.time() - t0:6.0f}s] {v:13s} epoch {r['epoch']}: {r['epoch_seconds']:.1f}s "
            f"train acc {r['train_accuracy']:.3f} val acc {r['val_accuracy']:.3f}", flush=True)
  reports = {v: searches[v].finish() for v in variants}
  search_seconds = time.time() - t0

  # --- derived networks -----------------------------------------------------------
  for v in variants:
    path = os.path.join(args.workdir, v, "genotype.json")
    eval_dir = os.path.join(args.workdir, v, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    with open(os.path.join(eval_dir, "train.log"), "w") as log, contextlib.redirect_stdout(log):
      rep = train.train_and_evaluate(eval_config(path, args), eval_dir)
    reports[v]["eval_test_accuracy"] = rep["test_accuracy"]
    reports[v]["eval_params"] = rep.get("params_total")
    reports[v]["eval_seconds_per_epoch"] = rep.get("seconds_per_epoch")
    print(f"[{time.time() - t0:6.0f}s] {v}: derived network test accuracy "
          f"{rep['test_accuracy']:.4f}", flush=True)

  # --- table ----------------------------------------------------------------------------
  base = reports.get("darts-2", {}).get("seconds_per_epoch")
  mb = lambda b: f"{b / 2**20:.1f}" if b else "-"  # noqa: E731
  print()
  print(f"CPU-sized search: {args.cells} cells, {args.channels} channels, {args.steps} nodes, "
        f"8 ops; CIFAR-10 subset {args.subset} ({len(halves[0])} / {len(halves[1])}), batch "
        f"{args.batch_size}, {args.epochs} epochs x {reports[variants[0]]['steps_per_epoch']} steps; "
        f"alpha Adam lr {args.alpha_lr}; lam = {args.lam}, beta = {args.beta}. Derived networks: "
        f"{args.eval_cells} cells, widths {args.eval_widths}, {args.eval_subset} training images, "
        f"{args.eval_epochs:g} epochs, test on {args.eval_test_subset}.")
  print()
  print("| variant | passes / step | s / epoch | vs darts-2 | step peak MiB | state MiB | "
        "val-half acc in search* | derived test acc | derived params |")
  print("|---|---|---|---|---|---|---|---|---|")
  for v in variants:
    r = reports[v]
    ratio = f"{r['seconds_per_epoch'] / base:.2f}" if base else "-"
    print(f"| {v} | {r['passes_per_step']:.0f} | {r['seconds_per_epoch']:.1f} | {ratio} | "
          f"{mb(r['step_peak_bytes'])} | {mb(r['state_bytes'])} | "
          f"{r['final']['val_accuracy']:.3f} | {r['eval_test_accuracy']:.4f} | "
          f"{r['eval_params'] if r['eval_params'] is not None else '-'} |")
  print()
  print("* mean accuracy on the validation batches during the last search epoch, at the weights "
        "each method scores there: DARTS-1 at w (never trained on that half), DARTS-2 at its "
        "virtual step w', RARTS at y, which is fitted on that half (in-sample). Not comparable "
        "across methods; the derived test accuracy is.")
  print()
  for v in variants:
    print(f"- {v}: {short_genotype(reports[v]['genotype'])}")
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print()
  print(f"compile (shared pass): {reports[variants[0]]['compile_seconds']:.0f}s; searches "
        f"{search_seconds:.0f}s; total {time.time() - t0:.0f}s; process max RSS {rss:.0f} MiB")
  summary = {"args": vars(args), "reports": {v: {k: x for k, x in r.items() if k != "config"}
                                             for v, r in reports.items()}}
  with open(os.path.join(args.workdir, "bench_search.json"), "w") as f:
    json.dump(summary, f, indent=1, default=str)
  return summary


if __name__ == "__main__":
  main()
