r"""CPU inference latency of dense vs compacted models, next to the FLOPs ratio.

  python scripts/bench_compact.py                      # VGG-19 and ResNet-20, 30/50/70%
  python scripts/bench_compact.py --models resnet20 --fractions 0.5 --repeats 5
  python scripts/bench_compact.py --compacted runs/vgg_prox/compacted   # a real run
  python scripts/bench_compact.py --method bn_scale --trained runs/res_l1/compacted  # pruned
  python scripts/bench_compact.py --models resnet20 --multiple_of 1,8  # also widths rounded to 8
  python scripts/bench_compact.py --conv_probe --batch_sizes 128 --repeats 15  # per-conv speed

Where the channels come from (printed with the table):
  * ``--compacted DIR``: a model saved by a run with ``config.compact = True``
    (or by ``sparsejax.compact.save``), e.g. after network slimming; the dense
    baseline is the same architecture at the widths it had before compaction.
  * otherwise a channel mask: in every layer the given fraction of channel
    groups with the smallest L2 norm (``--method magnitude``, on the random
    initialisation) or a random subset (``--method random``) is zeroed, in all
    of each group's parameters, and the model compacted. Latency depends only on
    the widths, not on the weights, so this measures the same thing a slimming
    run would at the same widths -- but the widths a real run picks differ.

For each model and fraction: parameters, per-example multiply-adds (MACs),
the FLOPs ratio dense/compacted, and the median latency over ``--repeats``
interleaved runs of the jitted forward pass (eval mode, float32, XLA on the
CPU) at batch 1 and batch 128, with the measured speedup and its ratio to the
FLOPs ratio (the issue's target: >= 0.8 at batch 128).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from sparsejax import compact as cp  # noqa: E402
from sparsejax import models  # noqa: E402
from sparsejax._util import parse_list  # noqa: E402

INPUT = {"lenet300_100": (28, 28, 1), "lenet5": (28, 28, 1)}


def _input_shape(name: str) -> tuple[int, ...]:
  return INPUT.get(name, (32, 32, 3))


def zero_channel_fraction(model, x, fraction: float, *, method: str = "magnitude",
                          seed: int = 0) -> int:
  """Zeroes ``fraction`` of the channel groups of every layer (in place).

  Groups are bucketed by the first conv/dense kernel whose output axis they
  belong to (a residual stream's channels go with the layer that creates
  them); in each bucket the lowest-scoring ``round(fraction * n)`` groups (at
  most ``n - 1``) are zeroed in all of their parameters. Returns how many.
  """
  an = cp.analyze(model, x)
  arrays = {p: np.asarray(l) for p, l in zip(an.paths, an.traced.leaves)}
  buckets: dict[str, list] = {}
  for g in an.groups:
    if g.pinned:
      continue
    key = next((p for p, ax, _ in g.members
                if p.endswith("kernel") and arrays[p].ndim >= 2 and ax == arrays[p].ndim - 1),
               None)
    if key is not None:
      buckets.setdefault(key, []).append(g)
  rng = np.random.default_rng(seed)
  chosen = []
  for key in sorted(buckets):
    groups = buckets[key]
    k = min(int(round(fraction * len(groups))), len(groups) - 1)
    if k <= 0:
      continue
    if method == "random":
      scores = rng.random(len(groups))
    else:
      scores = []
      for g in groups:
        total = 0.0
        for p, ax, i in g.members:
          if p.endswith("kernel") and ax == arrays[p].ndim - 1:
            total += float(np.sum(np.take(arrays[p], i, axis=ax) ** 2))
        scores.append(total)
    order = np.argsort(np.asarray(scores), kind="stable")
    chosen += [groups[i] for i in order[:k]]
  cp.zero_groups(model, chosen)
  return len(chosen)


def zero_by_bn_scale(model, x, fraction: float) -> tuple[int, float]:
  """Classic slimming's prune step, residual-aware (in place): one global |γ| threshold.

  A channel group can only go when every batch-norm scale in it is pruned, so
  each group is scored by the largest |γ| among its BN scales (a residual
  stream's group holds one per block of its stages); the lowest-scoring groups
  are zeroed in all their parameters until ``fraction`` of the conv/dense
  output channels (the table's "channels removed", classifier excluded) are
  gone. Returns (groups zeroed, the threshold: the largest score zeroed).
  """
  an = cp.analyze(model, x)
  arrays = {p: np.asarray(l) for p, l in zip(an.paths, an.traced.leaves)}
  counted = _kernel_widths(model, x)
  total = sum(counted.values())
  scored = []
  for g in an.groups:
    if g.pinned:
      continue
    gammas = [abs(float(arrays[p][i])) for p, ax, i in g.members
              if p.endswith("scale") and arrays[p].ndim == 1]
    width = sum(1 for p, ax, _ in g.members
                if p.endswith("kernel") and p.rsplit("/", 1)[0] in counted
                and ax == arrays[p].ndim - 1)
    if gammas and width:
      scored.append((max(gammas), width, g))
  if not scored:
    raise SystemExit("--method bn_scale: the model has no channel group with a batch-norm scale")
  scored.sort(key=lambda t: t[0])
  chosen, removed, threshold = [], 0, 0.0
  for score, width, g in scored:
    if removed >= fraction * total:
      break
    chosen.append(g)
    removed += width
    threshold = score
  cp.zero_groups(model, chosen)
  return len(chosen), threshold


def _forward(model):
  m = nnx.clone(model)
  m.eval()
  graphdef, state = nnx.split(m)
  fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  return lambda x: fn(state, x)


def _time(fns: dict, x, repeats: int) -> dict[str, float]:
  for fn in fns.values():  # compile and warm up
    for _ in range(2):
      jax.block_until_ready(fn(x))
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(x))
      times[k].append(time.perf_counter() - t)
  return {k: float(np.median(v)) for k, v in times.items()}


# ResNet-20's 3x3 convs per stage: (spatial size, residual width).
RESNET20_STAGES = ((32, 16), (16, 32), (8, 64))


def conv_probe(batch: int, repeats: int, widths=(1.0, 0.5, 0.3)) -> list[dict]:
  """Latency of one stride-1 3x3 conv (C -> C, NHWC, float32) of each ResNet-20
  stage at a fraction of its width, all timed interleaved in one process.

  Where a compacted ResNet-20's time goes: the network is these convs plus
  elementwise passes, and the whole-model speedup can follow the FLOPs ratio
  only where the conv's multiply-adds per second stay constant as it narrows.
  """
  rng = np.random.default_rng(0)
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
  cases, args = {}, {}
  for hw, full in RESNET20_STAGES:
    for f in widths:
      c = max(1, int(round(f * full)))
      key = (hw, full, f, c)
      args[key] = (jnp.asarray(rng.normal(size=(batch, hw, hw, c)), jnp.float32),
                   jnp.asarray(rng.normal(size=(3, 3, c, c)), jnp.float32))
      cases[key] = lambda _, a=args[key]: conv(*a)
  rows = []
  for (hw, full, f, c), sec in _time(cases, None, repeats).items():
    macs = batch * hw * hw * 9 * c * c
    rows.append(dict(hw=hw, full=full, fraction=f, channels=c, ms=1e3 * sec,
                     gmacs=macs / sec / 1e9, macs=macs))
  print(f"\nOne 3x3 conv C -> C, batch {batch}, median of {repeats} interleaved runs "
        f"(XLA {jax.default_backend()}, float32)")
  print("| stage (H=W, width) | channels | ms | GMAC/s | speedup vs full | MACs ratio | "
        "speedup / MACs ratio |\n|---|---|---|---|---|---|---|")
  for r in rows:
    base = next(b for b in rows if b["hw"] == r["hw"] and b["fraction"] == widths[0])
    sp, mr = base["ms"] / r["ms"], base["macs"] / r["macs"]
    print(f"| {r['hw']}x{r['hw']}, {r['full']} | {r['channels']} | {r['ms']:.2f} | "
          f"{r['gmacs']:.1f} | {sp:.2f} | {mr:.2f} | {sp / mr:.2f} |")
  return rows


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="vgg19,resnet20")
  ap.add_argument("--fractions", default="0.3,0.5,0.7")
  ap.add_argument("--method", choices=("magnitude", "random", "bn_scale"), default="magnitude",
                  help="magnitude / random: per-layer channel masks on the initialisation; "
                       "bn_scale: classic slimming's global |gamma| threshold on the model of "
                       "--trained")
  ap.add_argument("--trained", default=None,
                  help="with --method bn_scale: a trained model saved by sparsejax.compact.save "
                       "(e.g. a slimming run's workdir/compacted), pruned at each fraction")
  ap.add_argument("--batch_sizes", default="1,128")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--compacted", default=None,
                  help="a saved compacted model (sparsejax.compact.save) instead of masks")
  ap.add_argument("--multiple_of", default="1",
                  help="comma list: compact once per value with compact(..., multiple_of=m), "
                       "which rounds every shrunk width up to a multiple of m")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--conv_probe", action="store_true",
                  help="only time one 3x3 conv of each ResNet-20 stage at full, half and 30%% "
                       "width (batch: the largest of --batch_sizes)")
  args = ap.parse_args()
  try:
    batch_sizes = parse_list("--batch_sizes", args.batch_sizes, int, low=1)
    multiples = parse_list("--multiple_of", args.multiple_of, int, low=1)
    fractions = parse_list("--fractions", args.fractions, float, low=0.0, high=1.0,
                           high_open=True)
    model_names = parse_list("--models", args.models, allowed=tuple(models.MODELS))
  except ValueError as e:
    ap.error(str(e))
  if args.repeats < 1:
    ap.error(f"--repeats must be >= 1, got {args.repeats}")
  rows = []
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{os.cpu_count()} CPU(s) visible", flush=True)
  if args.conv_probe:
    conv_probe(max(batch_sizes), args.repeats)
    return
  cases = []  # (model name, label, dense model, compacted model, source)
  if args.compacted:
    meta = cp.read_metadata(args.compacted)
    small = cp.load(args.compacted)
    name = meta.get("name") or meta["class"]
    orig = (meta.get("extra") or {}).get("original_config")
    if orig is None:
      raise SystemExit(f"{args.compacted}/model.json has no extra.original_config: save it "
                       "with sparsejax.compact.report (config.compact = True) to benchmark it")
    dense = models.get_model(name, rngs=nnx.Rngs(0), **orig)
    cases.append((name, "saved run", dense, small, f"compacted model from {args.compacted}"))
  else:
    if (args.method == "bn_scale") != (args.trained is not None):
      ap.error("--method bn_scale and --trained DIR go together")
    for name in model_names:
      if args.trained:
        name = cp.read_metadata(args.trained).get("name") or name
        dense = cp.load(args.trained)
        source = f"global |gamma| threshold on the slimming run {args.trained}"
      else:
        dense = models.get_model(name, rngs=nnx.Rngs(args.seed))
        source = f"{args.method} channel mask (no slimming run)"
      x1 = jnp.zeros((1,) + _input_shape(name))
      for frac in fractions:
        masked = nnx.clone(dense)
        if args.trained:
          n, tau = zero_by_bn_scale(masked, x1, frac)
          print(f"{name}: {frac:.0%}: {n} groups with max |gamma| <= {tau:.3g} zeroed",
                flush=True)
        else:
          zero_channel_fraction(masked, x1, frac, method=args.method, seed=args.seed)
        for m in multiples:
          t = time.time()
          small = cp.compact(masked, x1, multiple_of=m)
          label = f"{frac:.0%}" + (f", widths ×{m}" if m > 1 else "")
          widths = (getattr(small, "config", None) or {}).get("widths")
          print(f"{name}: compacted {label} in {time.time() - t:.1f}s; widths {widths}",
                flush=True)
          cases.append((name, label, dense, small, source))
      if args.trained:
        break  # one trained model
  by_model: dict[str, list] = {}
  for case in cases:
    by_model.setdefault(case[0], []).append(case)
  for name, group in by_model.items():
    dense = group[0][2]
    x1 = jnp.zeros((1,) + _input_shape(name))
    cd = cp.count(dense, x1)
    fns = {"dense": _forward(dense)}
    for _, label, _, small, _ in group:
      fns[label] = _forward(small)
    lat = {}
    for b in batch_sizes:
      x = jnp.asarray(np.random.default_rng(0).normal(size=(b,) + _input_shape(name)),
                      jnp.float32)
      lat[b] = _time(fns, x, args.repeats)
      print(f"{name}: timed batch {b}", flush=True)
    widths_before = _kernel_widths(dense, x1)
    for _, label, _, small, source in group:
      cs = cp.count(small, x1)
      after = _kernel_widths(small, x1)
      removed = 1.0 - sum(after.values()) / sum(widths_before.values())
      ratio = cd.flops / cs.flops
      row = dict(model=name, label=label, removed=removed, params=(cd.params, cs.params),
                 flops=(cd.flops, cs.flops), ratio=ratio, source=source)
      for b in batch_sizes:
        row[b] = (lat[b]["dense"], lat[b][label])
      rows.append(row)
  print()
  head = ("| model | masked | channels removed | params dense → compacted | MACs dense → "
          "compacted | FLOPs ratio |")
  sep = "|---|---|---|---|---|---|"
  for b in batch_sizes:
    head += f" batch {b}: dense ms | compacted ms | speedup | speedup / FLOPs ratio |"
    sep += "---|---|---|---|"
  print(head)
  print(sep)
  for r in rows:
    line = (f"| {r['model']} | {r['label']} | {r['removed']:.1%} | {r['params'][0]:,} → "
            f"{r['params'][1]:,} | {r['flops'][0] / 1e6:.1f}M → {r['flops'][1] / 1e6:.1f}M | "
            f"{r['ratio']:.2f} |")
    for b in batch_sizes:
      d, c = r[b]
      line += f" {1e3 * d:.2f} | {1e3 * c:.2f} | {d / c:.2f} | {d / c / r['ratio']:.2f} |"
    print(line)
  sources = sorted({r["source"] for r in rows})
  print(f"\nChannels from: {'; '.join(sources)}. Median of {args.repeats} interleaved runs, "
        f"jitted eval-mode forward, float32.")


def _kernel_widths(model, x) -> dict[str, int]:
  """Output width of every conv/dense kernel except the one producing the logits."""
  from sparsejax.tree import path_str  # pylint: disable=import-outside-toplevel
  flat = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
  out = {path_str(p).rsplit("/", 1)[0]: np.shape(v)[-1] for p, v in flat
         if path_str(p).endswith("kernel") and len(np.shape(v)) >= 2}
  last = [l.name for l in cp.count(model, x).layers if l.flops][-1]
  return {k: w for k, w in out.items() if k != last}


if __name__ == "__main__":
  main()
