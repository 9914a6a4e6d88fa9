r"""Sparse matmul speed vs a dense ``jnp.dot``, as ratios measured in one run.

  python scripts/bench_kernels.py                 # CPU table (about 1-2 minutes)
  python scripts/bench_kernels.py --quick         # tiny settings, seconds
  python scripts/bench_kernels.py --json out.json

Table (every backend): ``y = x @ W`` for a 2048x2048 weight at batch 512,
blocks 32x32 and 128x128, 50/75/90/95% block sparsity. Columns:

* ``BSR`` -- :class:`~sparsejax.kernels.BlockSparse` from a magnitude block
  mask (:func:`sparsejax.masks.block`) of a random weight, so output blocks
  hold uneven numbers of blocks;
* ``balanced`` -- :class:`~sparsejax.kernels.BalancedBlockSparse` from
  :func:`~sparsejax.kernels.balanced_block_mask` at the same sparsity;
* ``padded ELL`` -- the BSR weight padded with zero blocks to the largest
  count of any output block (a plain ELL table, the layout of the probe in
  issue 7), run through the same code as ``balanced``;
* ``ideal`` -- ``1 / density``;
* ``BSR path`` -- what ``impl="auto"`` ran for the BSR weight: on a CPU the
  XLA path, or a dense product above the density of
  :func:`~sparsejax.kernels.bsr.cpu_dense_threshold`.

On a CPU the sparse ops take the default path (``impl="auto"`` -> XLA); on a
GPU or TPU the Pallas kernels (``impl="pallas"``) against the vendor dense
matmul (cuBLAS on a GPU). Variants are timed interleaved (round robin), so
load from other processes hits all alike; the wall-clock minimum gives the
speedups and the median process CPU time per call is printed next to it (on
a shared machine the dense matmul, which uses every core, suffers most from
load). An N:M 2:4 line closes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks
from sparsejax import kernels as spk
from sparsejax.kernels import bsr as bsr_lib


def _padded_ell(w: jax.Array, mask: np.ndarray, block_shape) -> spk.BalancedBlockSparse:
  """ELL table of ``where(mask, w, 0)`` padded with zero blocks to the largest count."""
  (K, N), (bk, bn) = w.shape, block_shape
  grid = mask.reshape(K // bk, bk, N // bn, bn).any(axis=(1, 3))
  width = int(grid.sum(axis=0).max())
  padded = grid.copy()
  for j in range(grid.shape[1]):
    free = np.nonzero(~grid[:, j])[0]
    padded[free[:width - grid[:, j].sum()], j] = True
  full = np.repeat(np.repeat(padded, bk, 0), bn, 1)
  return spk.BalancedBlockSparse.from_dense(jnp.where(mask, w, 0), full, block_shape)


def _time_round_robin(fns: dict, repeats: int) -> dict:
  """{name: (fn, args)} -> {name: (wall min s, median CPU s)}, interleaved."""
  for fn, args in fns.values():
    jax.block_until_ready(fn(*args))
  walls = {k: [] for k in fns}
  cpus = {k: [] for k in fns}
  for _ in range(repeats):
    for name, (fn, args) in fns.items():
      c0, t0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(fn(*args))
      walls[name].append(time.perf_counter() - t0)
      cpus[name].append(time.process_time() - c0)
  return {k: (min(walls[k]), float(np.median(cpus[k]))) for k in fns}


def bench(size: int, batch: int, blocks, sparsities, repeats: int, impl: str) -> list[dict]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((size, size)), jnp.float32)
  dense = jax.jit(jnp.dot)
  sparse = jax.jit(lambda x, f: spk.bsr_matmul(x, f, impl=impl))
  rows = []
  for b in blocks:
    bs = (b, b)
    for s in sparsities:
      mask = np.asarray(masks.block(w, s, bs))
      bsr = spk.BlockSparse.from_dense(w, mask, bs)
      bal_mask = np.asarray(spk.balanced_block_mask(w, s, bs))
      bal = spk.BalancedBlockSparse.from_dense(w, bal_mask, bs)
      ell = _padded_ell(w, mask, bs)
      wd = jnp.where(mask, w, 0)
      for f, m in ((bsr, mask), (bal, bal_mask)):   # a wrong table is worse than none
        err = float(jnp.max(jnp.abs(sparse(x, f) - dense(x, jnp.where(m, w, 0)))))
        assert err < 1e-2 * np.sqrt(size), f"sparse result differs from dense by {err}"
      t = _time_round_robin({"dense": (dense, (x, wd)), "bsr": (sparse, (x, bsr)),
                             "balanced": (sparse, (x, bal)), "ell": (sparse, (x, ell))}, repeats)
      rows.append({
          "block": b, "sparsity": s, "density": bsr.density,
          "balanced_density": bal.density, "ell_density": ell.density,
          **{f"{k}_ms": v[0] * 1e3 for k, v in t.items()},
          **{f"{k}_cpu_ms": v[1] * 1e3 for k, v in t.items()},
      })
      r = rows[-1]
      r["path"] = impl if impl != "auto" else (
          "dense" if bsr.density > bsr_lib.cpu_dense_threshold(bs) else "xla")
      print(f"| {b}x{b} | {s:.0%} | {r['density']:.3f} | {1 / r['density']:.1f}x | {r['path']} "
            f"| {r['dense_ms']:.2f} "
            + "".join(f"| {r[k + '_ms']:.2f} ({r['dense_ms'] / r[k + '_ms']:.2f}x) "
                      for k in ("bsr", "balanced", "ell"))
            + f"| {r['bsr_cpu_ms']:.1f} / {r['dense_cpu_ms']:.1f} |", flush=True)
  return rows


def bench_nm(size: int, batch: int, repeats: int, impl: str) -> dict:
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((batch, size)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((size, size)), jnp.float32)
  mask = np.asarray(masks.n_by_m(w, 2, 4, axis=0))
  f = spk.NMSparse.from_dense(w, mask, 2, 4, axis=0)
  t = _time_round_robin({"dense": (jax.jit(jnp.dot), (x, jnp.where(mask, w, 0))),
                         "nm": (jax.jit(lambda x, f: spk.nm_matmul(x, f, impl=impl)), (x, f))},
                        repeats)
  r = {"dense_ms": t["dense"][0] * 1e3, "nm_ms": t["nm"][0] * 1e3}
  print(f"2:4 (N:M along K): dense {r['dense_ms']:.2f} ms, nm_matmul {r['nm_ms']:.2f} ms "
        f"({r['dense_ms'] / r['nm_ms']:.2f}x)")
  return r


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--blocks", default="32,128")
  parser.add_argument("--sparsities", default="0.5,0.75,0.9,0.95")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args()
  if args.quick:
    args.size, args.batch, args.blocks, args.sparsities, args.repeats = 256, 64, "32", "0.9", 3
  blocks = [int(b) for b in args.blocks.split(",")]
  sparsities = [float(s) for s in args.sparsities.split(",")]
  backend = jax.default_backend()
  impl = "auto" if backend == "cpu" else "pallas"
  load0 = os.getloadavg()
  print(f"backend {backend} ({jax.devices()[0].device_kind}), {os.cpu_count()} CPUs, "
        f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; sparse impl={impl}; "
        f"{args.size}x{args.size} weight, batch {args.batch}, f32")
  print("| block | sparsity | density | ideal | BSR path | dense ms | BSR ms (speedup) | "
        "balanced ms (speedup) | padded ELL ms (speedup) | CPU ms BSR / dense |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  rows = bench(args.size, args.batch, blocks, sparsities, args.repeats, impl)
  nm = bench_nm(args.size, args.batch, args.repeats, impl)
  load1 = os.getloadavg()
  print(f"load average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump({"backend": backend, "impl": impl, "size": args.size, "batch": args.batch,
                 "load_start": load0, "load_end": load1, "rows": rows, "nm_2_4": nm}, fh,
                indent=1)


if __name__ == "__main__":
  main()
