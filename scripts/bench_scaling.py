r"""Memory per device and communication of sharded sparsejax states, measured.

  python scripts/bench_scaling.py                 # ResNet-50 and ViT-B/16, 8 and 64 devices
  python scripts/bench_scaling.py --small         # tiny shapes, a few seconds (smoke test)

Runs on fake CPU devices (``--xla_force_host_platform_device_count``, set
here before JAX starts). For each model (the parameter shapes of ResNet-50,
25.6M parameters, and ViT-B/16, 86.6M), device count and layout it builds
the parameter shardings with :mod:`sparsejax.parallel`, creates the optimizer
state of each algorithm with :func:`sparsejax.parallel.init_opt_state` (the
code path of the trainer) and reports the bytes per device of every part:

* parameters; optimizer moments (SGD momentum, or Adam's two);
* masks of ``magnitude_pruning`` (bool, 1 byte per entry; "packed" is what
  1 bit per entry would take, not allocated by sparsejax);
* :math:`\xi` of ``network_slimming``; :math:`U` of ``sparse_group_lasso``.

Layouts: ``dp`` (mesh ``{"data": N}``, no rules: replicated), ``tp8`` (mesh
``{"data": N/8, "model": 8}`` with ``parallel.MODEL_PARALLEL_RULES``: output
channels split 8 ways), ``fsdp`` (mesh ``{"data": N}``, every kernel split
over all devices on its last axis, classifier on its input axis).

Per-device bytes come from ``NamedSharding.shard_shape`` of every leaf; where
the whole layout fits in ``--alloc-gb`` of host memory the state is really
allocated and the bytes of each device's ``addressable_shards`` are checked
against that number ("measured" column). Then it compiles the
``magnitude_pruning`` update (global threshold) and the ``trained_rank_pruning``
truncation on one sharded layout and lists their collectives from the
optimized HLO.
"""

from __future__ import annotations

import argparse
import os
import sys

_ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_ap.add_argument("--devices", default="8,64", help="comma-separated device counts")
_ap.add_argument("--models", default="resnet50,vit_b16")
_ap.add_argument("--alloc-gb", type=float, default=3.0,
                 help="allocate a layout for real when its total over devices fits in this")
_ap.add_argument("--small", action="store_true", help="tiny shapes (smoke test)")
_ap.add_argument("--skip-hlo", action="store_true")
ARGS = _ap.parse_args()
_COUNTS = sorted({int(n) for n in ARGS.devices.split(",")})
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={max(_COUNTS)}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import math  # pylint: disable=wrong-import-position
import re

from absl import logging
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sparsejax import optim  # pylint: disable=wrong-import-position
from sparsejax import parallel
from sparsejax import tree as tree_lib
from sparsejax.optim import trp

F32 = jnp.float32


def _sds(*shape):
  return jax.ShapeDtypeStruct(tuple(shape), F32)


def resnet50(width: int = 64, classes: int = 1000) -> dict:
  """Parameter shapes of ResNet-50 (bottleneck v1.5, BN scale/bias), HWIO kernels."""
  def conv_bn(k, cin, cout):
    return {"conv": {"kernel": _sds(k, k, cin, cout)},
            "bn": {"scale": _sds(cout), "bias": _sds(cout)}}
  p = {"stem": conv_bn(7, 3, width)}
  cin = width
  for s, (blocks, w) in enumerate(zip((3, 4, 6, 3), (width, 2 * width, 4 * width, 8 * width))):
    for b in range(blocks):
      blk = {"conv1": conv_bn(1, cin, w), "conv2": conv_bn(3, w, w),
             "conv3": conv_bn(1, w, 4 * w)}
      if b == 0:
        blk["proj"] = conv_bn(1, cin, 4 * w)
      p[f"stage{s + 1}_block{b}"] = blk
      cin = 4 * w
  p["fc"] = {"kernel": _sds(cin, classes), "bias": _sds(classes)}
  return p


def vit(dim: int = 768, depth: int = 12, mlp: int = 3072, patch: int = 16, tokens: int = 197,
        classes: int = 1000) -> dict:
  """Parameter shapes of ViT-B/16 (fused qkv), 224x224 inputs."""
  def ln():
    return {"scale": _sds(dim), "bias": _sds(dim)}
  p = {"patch": {"kernel": _sds(patch, patch, 3, dim), "bias": _sds(dim)},
       "cls": _sds(1, 1, dim), "pos_embed": _sds(1, tokens, dim)}
  for i in range(depth):
    p[f"block{i}"] = {
        "ln1": ln(), "qkv": {"kernel": _sds(dim, 3 * dim), "bias": _sds(3 * dim)},
        "proj": {"kernel": _sds(dim, dim), "bias": _sds(dim)}, "ln2": ln(),
        "fc1": {"kernel": _sds(dim, mlp), "bias": _sds(mlp)},
        "fc2": {"kernel": _sds(mlp, dim), "bias": _sds(dim)}}
  p["ln"] = ln()
  p["head"] = {"kernel": _sds(dim, classes), "bias": _sds(classes)}
  return p


def models() -> dict:
  if ARGS.small:
    return {"resnet50": resnet50(width=8, classes=16),
            "vit_b16": vit(dim=64, depth=2, mlp=256, patch=4, tokens=17, classes=16)}
  return {"resnet50": resnet50(), "vit_b16": vit()}


FSDP_RULES = (
    (r"(^|/)(fc|head)/kernel$", ("data", None)),
    (r"(^|/)(kernel|pos_embed)$", (..., "data")),
    (r"(^|/)(bias|scale)$", (..., "data")),
)


def layouts(n: int) -> dict:
  out = {"dp": ({"data": n}, ())}
  if n % 8 == 0:
    out["tp8"] = ([("data", n // 8), ("model", 8)], parallel.MODEL_PARALLEL_RULES)
  out["fsdp"] = ({"data": n}, FSDP_RULES)
  return out


def algorithms() -> dict:
  sgd = optax.sgd(0.1, momentum=0.9)
  return {
      "gmp": optax.chain(sgd, optim.magnitude_pruning(
          0.9, begin_step=0, end_step=100, update_every=10, distribution="global")),
      "slimming": optax.chain(sgd, optim.network_slimming(0.1, 1e-4, 1.0)),
      "sgl": optax.chain(optim.sparse_group_lasso(0.1, 2.5, num_examples=1.0), optax.adam(1e-3)),
  }


# --------------------------------------------------------------------------
# Bytes per device


def _shard_bytes(shape, dtype, sharding: NamedSharding) -> int:
  return math.prod(sharding.shard_shape(tuple(shape))) * jnp.dtype(dtype).itemsize


def _packed_bytes(shape, sharding: NamedSharding) -> int:
  return -(-math.prod(sharding.shard_shape(tuple(shape))) // 8)


def _classify(path: str) -> str:
  if "/masks/" in f"/{path}":
    return "masks"
  if "/xi/" in f"/{path}":
    return "xi"
  if re.search(r"(^|/)u/", path):
    return "U"
  return "moments"


def per_device(abstract_state, shardings) -> dict[str, int]:
  """Max over devices of the bytes of each category (shards are equal-sized)."""
  out: dict[str, int] = {}
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  for (path, leaf), s in zip(tree_lib.leaves_with_paths(abstract_state), flat_s):
    cat = _classify(path)
    out[cat] = out.get(cat, 0) + _shard_bytes(leaf.shape, leaf.dtype, s)
    if cat == "masks":
      out["masks_packed"] = out.get("masks_packed", 0) + _packed_bytes(leaf.shape, s)
  return out


def _init_params(abstract, shardings):
  leaves, treedef = jax.tree.flatten(abstract)

  def make():  # values do not matter for memory; distinct per leaf
    return jax.tree.unflatten(treedef, [jnp.full(l.shape, 0.01 * (i + 1), l.dtype)
                                        for i, l in enumerate(leaves)])
  return jax.jit(make, out_shardings=shardings)()


def measure(model_name: str, abstract_params, n: int, layout: str, axes, rules) -> list[dict]:
  mesh = parallel.make_mesh(axes, devices=jax.devices()[:n])
  pshard = parallel.param_shardings(abstract_params, mesh, rules, indivisible="replicate")
  placed_abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 abstract_params, pshard)
  param_bytes = sum(_shard_bytes(a.shape, a.dtype, s) for a, s in zip(
      jax.tree.leaves(abstract_params), jax.tree.leaves(
          pshard, is_leaf=lambda s: isinstance(s, NamedSharding))))
  full_param_bytes = sum(a.size * 4 for a in jax.tree.leaves(abstract_params))
  rows = []
  params = None
  for alg, tx in algorithms().items():
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    sshard = parallel.shardings_like_params(abstract_state, placed_abstract, mesh)
    parts = per_device(abstract_state, sshard)
    total_all = n * (param_bytes + sum(v for k, v in parts.items() if k != "masks_packed"))
    measured = "-"
    if total_all <= ARGS.alloc_gb * 2**30:
      if params is None:
        params = _init_params(abstract_params, pshard)
        got = parallel.bytes_per_device(params)
        assert max(got.values()) == param_bytes, (max(got.values()), param_bytes)
      state = parallel.init_opt_state(tx, params, mesh)
      got = parallel.bytes_per_device(state)
      expect = sum(v for k, v in parts.items() if k != "masks_packed")
      assert len(got) == n and max(got.values()) == expect, (alg, layout, got, expect)
      measured = "yes"
      del state
    rows.append({"model": model_name, "devices": n, "layout": layout, "alg": alg,
                 "params": param_bytes, "full_params": full_param_bytes, **parts,
                 "measured": measured})
  del params
  return rows


def _mb(b) -> str:
  return "-" if b is None else f"{b / 2**20:,.1f}"


def print_table(rows) -> None:
  print("| model | devices | layout | algorithm | params | moments | masks (bool) | masks "
        "(packed) | ξ | U | total | measured |")
  print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
  for r in rows:
    total = r["params"] + sum(r.get(k, 0) for k in ("moments", "masks", "xi", "U"))
    print(f"| {r['model']} | {r['devices']} | {r['layout']} | {r['alg']} | {_mb(r['params'])} | "
          f"{_mb(r.get('moments'))} | {_mb(r.get('masks'))} | {_mb(r.get('masks_packed'))} | "
          f"{_mb(r.get('xi'))} | {_mb(r.get('U'))} | {_mb(total)} | {r['measured']} |")


# --------------------------------------------------------------------------
# Collectives


_COLL = re.compile(r"=\s*(.*?)\s(all-gather|all-reduce|all-to-all|collective-permute|"
                   r"reduce-scatter)(-start)?\(")


def collectives(text: str) -> list[tuple[str, int, int]]:
  """(op, number of operands, bytes) per collective of an optimized HLO module."""
  out = []
  for line in text.splitlines():
    m = _COLL.search(line)
    if not m:
      continue
    nbytes, count = 0, 0
    for dtype, dims in re.findall(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]", m.group(1)):
      bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))
      nbytes += math.prod(int(x) for x in dims.split(",") if x) * bits // 8
      count += 1
    out.append((m.group(2), count, nbytes))
  return out


def hlo_report(abstract_params, n: int, *, include_dense: bool) -> None:
  mesh = parallel.make_mesh([("data", n // 8), ("model", 8)], devices=jax.devices()[:n])
  rules = parallel.MODEL_PARALLEL_RULES
  pshard = parallel.param_shardings(abstract_params, mesh, rules, indivisible="replicate")
  params = _init_params(abstract_params, pshard)
  n_kernels = sum(tree_lib.kernels(p, l) for p, l in tree_lib.leaves_with_paths(params))
  kernel_bytes = sum(l.size * 4 for p, l in tree_lib.leaves_with_paths(params)
                     if tree_lib.kernels(p, l))
  cases = {
      "magnitude_pruning update (global threshold)": optim.magnitude_pruning(
          0.9, begin_step=0, end_step=100, update_every=1, distribution="global"),
      "magnitude_pruning update (uniform, per-leaf thresholds)": optim.magnitude_pruning(
          0.9, begin_step=0, end_step=100, update_every=1),
      "trained_rank_pruning truncation" + (" (dense kernels)" if include_dense else ""):
          trp.trained_rank_pruning(0.9, include_dense=include_dense,
                                   filter_fn=(lambda p, l: False) if include_dense else None),
  }
  print(f"\nCollectives in the compiled update, {n} devices, mesh data={n // 8} x model=8, "
        f"{n_kernels} kernels ({kernel_bytes / 2**20:,.1f} MiB f32):\n")
  print("| update | collective | operands | bytes per call |")
  print("|---|---|---:|---:|")
  for name, tx in cases.items():
    state = parallel.init_opt_state(tx, params, mesh)
    text = jax.jit(tx.update).lower(params, state, params).compile().as_text()
    colls = collectives(text)
    if not colls:
      print(f"| {name} | none | | |")
    agg: dict[str, list[int]] = {}
    for op, cnt, nb in colls:
      a = agg.setdefault(op, [0, 0, 0])
      a[0] += 1
      a[1] += cnt
      a[2] += nb
    for op, (calls, cnt, nb) in agg.items():
      print(f"| {name} | {op} x{calls} | {cnt} | {nb:,} |")
    del state
  print(f"\n(A data-parallel gradient all-reduce moves the f32 parameters: "
        f"{sum(l.size * 4 for l in jax.tree.leaves(params)) / 2**20:,.1f} MiB per step.)")


def main() -> None:
  logging.set_verbosity(logging.ERROR)  # dimensions kept whole by indivisible="replicate"
  print(f"{jax.device_count()} fake {jax.devices()[0].platform} devices; sizes in MiB per "
        "device\n")
  rows = []
  for name in ARGS.models.split(","):
    abstract = models()[name]
    count = sum(a.size for a in jax.tree.leaves(abstract))
    kernels = sum(a.size for p, a in tree_lib.leaves_with_paths(abstract)
                  if tree_lib.kernels(p, a))
    print(f"{name}: {count:,} parameters, {kernels:,} in conv/dense kernels")
    for n in _COUNTS:
      for layout, (axes, rules) in layouts(n).items():
        rows.extend(measure(name, abstract, n, layout, axes, rules))
  print()
  print_table(rows)
  hlo_counts = [n for n in _COUNTS if n % 8 == 0]
  if not ARGS.skip_hlo and not hlo_counts:
    print(f"\n(no HLO report: it needs a --devices count that is a multiple of 8, got {_COUNTS})")
  elif not ARGS.skip_hlo:
    for name in ARGS.models.split(","):
      print(f"\n### {name}")
      hlo_report(models()[name], min(hlo_counts),
                 include_dense=name.startswith("vit"))


if __name__ == "__main__":
  main()
