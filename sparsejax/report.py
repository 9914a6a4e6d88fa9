"""Run reports: ``report.json``, the per-layer sparsity plot and the console table."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from sparsejax import masks as masks_lib
from sparsejax import tree as tree_lib

__all__ = ["build_report", "write_report", "plot_layer_sparsity", "progress_bar"]


class _NoBar:
  def update(self, n):
    del n

  def write(self, s):
    print(s, flush=True)

  def close(self):
    pass


def progress_bar(total: int, initial: int = 0, *, enabled: bool = True):
  """A tqdm bar over steps (or a stand-in that only prints epoch lines)."""
  if not enabled:
    return _NoBar()
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              file=sys.stderr, leave=False)


def _kernel_layers(summary: dict, params) -> list[dict]:
  kernel_paths = {p for p, x in tree_lib.leaves_with_paths(params) if tree_lib.kernels(p, x)}
  return [dict(layer, prunable=layer["path"] in kernel_paths) for layer in summary["layers"]]


def build_report(*, config, test: dict, summary: dict, params, dataset_source: str,
                 steps: int, steps_per_epoch: int, epoch_seconds: list[float],
                 wall_seconds: float, extra: dict | None = None) -> dict[str, Any]:
  """Assembles ``report.json``'s content.

  ``sparsity`` is the fraction of exact zeros among the prunable leaves (conv
  and dense kernels); ``sparsity_all_params`` counts every parameter.
  ``wall_seconds`` is the trainer's wall time up to the run's final checkpoint,
  summed over the invocations of a resumed run (the final evaluation after it
  is not included, so that a finished run opened again reports the same).
  """
  layers = _kernel_layers(summary, params)
  prunable = [l for l in layers if l["prunable"]]
  n = sum(l["params"] for l in prunable)
  z = sum(l["zeros"] for l in prunable)
  # The first epoch includes compilation; report the median of the rest too.
  later = epoch_seconds[1:] or epoch_seconds
  report = {
      "test_accuracy": test["accuracy"],
      "test_loss": test["loss"],
      "sparsity": z / max(n, 1),
      "sparsity_all_params": summary["total"]["sparsity"],
      "params_total": summary["total"]["params"],
      "params_nonzero": summary["total"]["params"] - summary["total"]["zeros"],
      "layers": layers,
      "dataset": config.dataset,
      "dataset_source": dataset_source,
      "model": config.model.name,
      "algorithm": config.algorithm.name,
      "steps": steps,
      "epochs": steps / steps_per_epoch,
      "seconds_per_epoch": float(np.median(later)) if later else None,
      "wall_seconds": wall_seconds,
      "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
  }
  if extra:
    report.update(extra)
  return report


def plot_layer_sparsity(layers: list[dict], path: str, title: str = "") -> str:
  """Bar chart of the fraction of zeros per prunable layer; returns ``path``."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  layers = [l for l in layers if l.get("prunable", True)]
  names = [l["path"].removesuffix("/kernel") for l in layers]
  values = [1.0 - l["density"] for l in layers]
  fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.5))
  ax.bar(range(len(names)), values, color="tab:blue")
  for i, (v, l) in enumerate(zip(values, layers)):
    ax.text(i, v + 0.01, f"{v:.0%}", ha="center", va="bottom", fontsize=8)
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
  ax.set_ylim(0, 1.1)
  ax.set_ylabel("fraction of weights zero")
  ax.set_title(title or "per-layer sparsity", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def write_report(workdir: str, report: dict, summary: dict, *, quiet: bool = False) -> dict:
  """Writes ``report.json`` and ``sparsity.png``; prints the table; returns paths."""
  json_path = os.path.join(workdir, "report.json")
  with open(json_path + ".tmp", "w") as f:
    json.dump(report, f, indent=2, default=float)
  os.replace(json_path + ".tmp", json_path)  # never half-written
  png = plot_layer_sparsity(
      report["layers"], os.path.join(workdir, "sparsity.png"),
      title=f"{report['model']} / {report['dataset']} / {report['algorithm']}\n"
            f"{report['sparsity']:.1%} of kernel weights zero, test acc {report['test_accuracy']:.2%}")
  if not quiet:
    print(masks_lib.format_summary(summary), flush=True)
    print(f"test accuracy {report['test_accuracy']:.4f}   kernel sparsity "
          f"{report['sparsity']:.4f}   report: {json_path}   plot: {png}", flush=True)
  return {"report": json_path, "plot": png}
