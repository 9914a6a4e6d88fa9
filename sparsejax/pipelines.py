r"""Multi-stage training recipes built on :func:`sparsejax.train.train_and_evaluate`.

Classic network slimming (Liu et al. 2017; with nonconvex penalties, Bui et al.
2020-21) runs in three stages:

1. **train** with a sparsity penalty on the batch-norm scales :math:`\gamma`
   (``config.algorithm.name = "slimming_penalty"``, see
   :func:`sparsejax.optim.slimming.slimming_penalty`);
2. **prune** the channels with the smallest :math:`|\gamma|` over the whole
   network (one global threshold, a fraction of all channels;
   :func:`global_gamma_pruning`) by setting their scale and shift to exactly 0;
3. **fine-tune** with those channels held at zero
   (``config.algorithm.name = "channel_mask"``,
   :func:`sparsejax.optim.slimming.channel_mask`) and no penalty.

:func:`slimming_pipeline` runs the three stages in ``workdir/train`` and
``workdir/finetune`` (each resumable like any trainer run) and writes
``workdir/pipeline.json``. A config for it is an ordinary trainer config plus a
``pipeline`` section::

  config.pipeline.prune_fraction = 0.7   # fraction of all selected channels
  config.pipeline.min_channels = 1       # channels every layer keeps
  config.pipeline.finetune.num_epochs = 160
  config.pipeline.finetune.lr = ...      # a config.lr-style section

The selected scales are those of ``config.algorithm.filter_regex`` (ANDed with
:func:`sparsejax.tree.bn_scales`), the same the penalty acted on.
"""

from __future__ import annotations

import json
import math
import os
import re
import types
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from sparsejax import checkpoint as ckpt_lib
from sparsejax import data as data_lib
from sparsejax import masks as masks_lib
from sparsejax import models as models_lib
from sparsejax import tree as tree_lib
from sparsejax import train
from sparsejax._util import check_int
from sparsejax.optim import slimming

__all__ = [
    "global_gamma_pruning",
    "prune_channels",
    "load_final_state",
    "evaluate_state",
    "finetune_config",
    "slimming_pipeline",
]


# ----------------------------------------------------------------------------
# Stage 2: choosing and zeroing channels
# ----------------------------------------------------------------------------


def global_gamma_pruning(params: Any, fraction: float, *,
                         filter_fn: tree_lib.FilterFn | None = None,
                         min_channels: int = 1) -> dict[str, list[int]]:
  r"""The channels of smallest :math:`|\gamma|` over all selected scales.

  With :math:`N` selected channels in all, picks :math:`k =
  \lfloor\text{fraction}\cdot N\rfloor` (the counting rule of
  :mod:`sparsejax.masks`) in increasing order of :math:`|\gamma|`, ties broken
  by tree order then channel index, skipping a channel when its layer would
  keep fewer than ``min_channels`` (then the next-smallest channel elsewhere is
  taken, so exactly :math:`k` are always pruned). With ``min_channels=0`` this
  is exactly the :math:`k` lowest :math:`|\gamma|` of the network. Host-side.

  Args:
    params: a parameter pytree.
    fraction: fraction of channels to prune, in ``[0, 1)``.
    filter_fn: which scales; default :func:`sparsejax.tree.bn_scales`. Each
      selected leaf's last axis is its channels (a 1-D BN scale).
    min_channels: channels each layer keeps at least (non-negative int).

  Returns:
    ``{path: sorted channel indices}`` for every selected leaf (possibly
    empty lists), in tree order.

  Raises:
    ValueError: for a bad ``fraction``/``min_channels``, no selected leaf, or
      when ``min_channels`` leaves fewer than :math:`k` prunable channels.
  """
  masks_lib._check_sparsity(fraction, "fraction")  # pylint: disable=protected-access
  if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 0:
    raise ValueError(f"min_channels must be a non-negative int, got {min_channels!r}")
  filter_fn = tree_lib.bn_scales if filter_fn is None else filter_fn
  selected = tree_lib.select(params, filter_fn)
  layers = [(path, np.abs(np.asarray(jax.device_get(leaf), np.float64)).reshape(-1, np.shape(leaf)[-1]).max(0))
            for (path, leaf), sel in zip(tree_lib.leaves_with_paths(params),
                                         jax.tree.leaves(selected)) if sel]
  if not layers:
    raise ValueError("filter_fn selected no leaf of params: nothing to prune "
                     "(default: batch-norm scales, 1-D leaves named 'scale')")
  total = sum(len(g) for _, g in layers)
  k = int(masks_lib.num_to_prune(total, fraction))
  cap = [max(len(g) - min_channels, 0) for _, g in layers]
  if sum(cap) < k:
    raise ValueError(
        f"cannot prune {k} of {total} channels (fraction={fraction!r}) while every layer "
        f"keeps min_channels={min_channels}: at most {sum(cap)} are prunable")
  # Sort (|gamma|, layer, channel) lexicographically: a stable global order.
  values = np.concatenate([g for _, g in layers])
  layer_of = np.concatenate([np.full(len(g), i) for i, (_, g) in enumerate(layers)])
  chan_of = np.concatenate([np.arange(len(g)) for _, g in layers])
  order = np.lexsort((chan_of, layer_of, values))
  taken = [0] * len(layers)
  chosen: list[list[int]] = [[] for _ in layers]
  n = 0
  for j in order:
    if n == k:
      break
    i = int(layer_of[j])
    if taken[i] < cap[i]:
      chosen[i].append(int(chan_of[j]))
      taken[i] += 1
      n += 1
  return {path: sorted(c) for (path, _), c in zip(layers, chosen)}


def prune_channels(params: Any, pruned: Mapping[str, Any], *, include_bias: bool = True) -> Any:
  """Returns ``params`` with the ``pruned`` channels (and their BN shift) set to 0.

  Uses the masks of :func:`sparsejax.optim.slimming.channel_mask`, so the
  zeroed entries are exactly those the fine-tuning stage holds at zero.
  """
  state = slimming.channel_mask(dict(pruned), include_bias=include_bias).init(params)
  return masks_lib.apply(params, state.masks)


# ----------------------------------------------------------------------------
# Reading a finished stage back
# ----------------------------------------------------------------------------


def _build(config):
  """The trainer's fresh state, graphdefs and algorithm for ``config``, without data."""
  info = data_lib.info(config.dataset)
  stand_in = types.SimpleNamespace(images=np.zeros((1, *info.image_shape), np.uint8))
  model = models_lib.get_model(
      config.model.name, num_classes=info.num_classes, rngs=nnx.Rngs(config.seed),
      **train._model_kwargs(config, stand_in))  # pylint: disable=protected-access
  # The optimizer state's structure does not depend on the schedule's length.
  lr_schedule = train.make_lr_schedule(config, 1, 1)
  algorithm = train.make_algorithm(config, lr_schedule, 1, 1)
  tx = train.make_optimizer(config, lr_schedule, algorithm)
  return train.create_train_state(model, tx, algorithm.prepare_params)


def load_final_state(config, workdir: str) -> train.TrainState:
  """The newest verified checkpoint of a trainer run of ``config`` in ``workdir``.

  Args:
    config: the config the run used (its model, optimizer and algorithm fix
      the state's structure).
    workdir: the run's workdir (the one passed to ``train_and_evaluate``).

  Returns:
    The restored :class:`sparsejax.train.TrainState`.

  Raises:
    FileNotFoundError: if the workdir holds no checkpoint.
    sparsejax.checkpoint.CheckpointError: if none can be restored, or the run
      finished (its ``report.json`` names its last step) but that step's
      checkpoint is not the newest usable one.
  """
  target, _, _ = _build(config)
  directory = os.path.join(workdir, "checkpoints")
  manager = ckpt_lib.CheckpointManager(directory)
  state = manager.restore_latest(target)
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  report_path = os.path.join(workdir, "report.json")
  if os.path.exists(report_path):
    with open(report_path) as f:
      final = json.load(f).get("steps")
    if final is not None and int(state.step) != int(final):
      raise ckpt_lib.CheckpointError(
          f"the run in {workdir} finished at step {final}, but the newest usable checkpoint "
          f"is step {int(state.step)}; rerun its training to restore the final state")
  return state


def evaluate_state(config, state: train.TrainState) -> dict:
  """Test loss and accuracy of ``state`` on the config's test split (and subset)."""
  _, _, eval_def = _build(config)
  test_ds = train.load_data(config, "test")
  return train.evaluate(train.make_eval_step(eval_def), state.params, state.model_state,
                        test_ds, config.get("eval_batch_size", 1000))


# ----------------------------------------------------------------------------
# The three-stage pipeline
# ----------------------------------------------------------------------------


def _check_pipeline(config):
  pcfg = config.get("pipeline")
  if pcfg is None:
    raise ValueError("config.pipeline is missing: a slimming pipeline config needs "
                     "pipeline.prune_fraction and pipeline.finetune.{num_epochs, lr}")
  if config.algorithm.name != "slimming_penalty":
    raise ValueError(f"config.algorithm.name must be 'slimming_penalty' for the three-stage "
                     f"pipeline, got {config.algorithm.name!r}")
  masks_lib._check_sparsity(pcfg.get("prune_fraction"), "config.pipeline.prune_fraction")  # pylint: disable=protected-access
  ft = pcfg.get("finetune")
  if ft is None or ft.get("lr") is None:
    raise ValueError("config.pipeline.finetune must hold num_epochs and lr")
  e = ft.get("num_epochs")
  if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < math.inf:
    raise ValueError(f"config.pipeline.finetune.num_epochs must be a finite number >= 0 "
                     f"(0 skips fine-tuning), got {e!r}")
  check_int("config.pipeline.min_channels", pcfg.get("min_channels", 1))
  if e > 0:
    # Stage 3's settings are checked now, not after stage 1 has trained. Its
    # errors name the top-level fields that finetune_config fills from
    # pipeline.finetune; say where they came from.
    try:
      train.validate_config(finetune_config(config, {}))
    except (TypeError, ValueError) as err:
      msg = str(err)
      for key in ("lr", "num_epochs", "optimizer", "batch_size"):
        if ft.get(key) is not None:
          msg = re.sub(rf"\bconfig\.{key}\b", f"config.pipeline.finetune.{key}", msg)
      raise type(err)(f"stage 3 (fine-tuning): {msg}") from None
  return pcfg


def finetune_config(config, pruned: Mapping[str, list[int]]) -> ml_collections.ConfigDict:
  """The stage-3 config: ``config`` with the channel mask, fine-tune epochs and lr."""
  pcfg = config.pipeline
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.algorithm = ml_collections.ConfigDict(dict(
        name="channel_mask", include_bias=True,
        pruned=[[path, list(map(int, idx))] for path, idx in pruned.items()]))
    c.num_epochs = float(pcfg.finetune.num_epochs)
    c.lr = pcfg.finetune.lr.copy_and_resolve_references()
    for key in ("optimizer", "batch_size"):
      if pcfg.finetune.get(key) is not None:
        c[key] = pcfg.finetune[key]
  return c


def slimming_pipeline(config, workdir: str) -> dict:
  """Classic network slimming: train with a penalty, prune, fine-tune.

  Stage 1 runs ``train_and_evaluate(config, workdir/train)``; stage 2 restores
  its final state, picks ``config.pipeline.prune_fraction`` of the selected
  channels by :func:`global_gamma_pruning`, zeroes their scale and shift and
  evaluates; stage 3 runs ``train_and_evaluate`` on
  :func:`finetune_config` in ``workdir/finetune`` starting from the pruned
  state (fresh optimizer state). Skipped when
  ``config.pipeline.finetune.num_epochs == 0``. Re-running resumes each stage.

  Args:
    config: a trainer config with ``algorithm.name = "slimming_penalty"`` and a
      ``pipeline`` section (module docstring).
    workdir: where the stages' workdirs and ``pipeline.json`` go.

  Returns:
    ``{"train": report, "pruned": {path: indices}, "pruned_channels": k,
    "channels": N, "pruned_test_accuracy": ..., "finetune": report or None,
    "test_accuracy": final accuracy}``, also written to
    ``workdir/pipeline.json``.
  """
  train.validate_config(config)
  pcfg = _check_pipeline(config)
  workdir = os.path.abspath(os.path.expanduser(str(workdir)))
  os.makedirs(workdir, exist_ok=True)
  stage1_dir = os.path.join(workdir, "train")
  report1 = train.train_and_evaluate(config, stage1_dir)
  if "stopped_at_step" in report1:
    return {"train": report1}

  state1 = load_final_state(config, stage1_dir)
  filter_fn = slimming._bn_filter_from_config(config.algorithm)  # pylint: disable=protected-access
  pruned = global_gamma_pruning(state1.params, float(pcfg.prune_fraction), filter_fn=filter_fn,
                                min_channels=int(pcfg.get("min_channels", 1)))
  pruned_params = prune_channels(state1.params, pruned)
  pruned_state = state1._replace(params=pruned_params)
  pruned_eval = evaluate_state(config, pruned_state)
  n_pruned = sum(len(v) for v in pruned.values())
  n_total = sum(int(np.shape(leaf)[-1]) for path, leaf in tree_lib.leaves_with_paths(state1.params)
                if path in pruned)
  print(f"pruned {n_pruned}/{n_total} channels (global |gamma| threshold); test accuracy "
        f"before fine-tuning {pruned_eval['accuracy']:.4f}", flush=True)

  report2 = None
  if float(pcfg.finetune.num_epochs) > 0:
    config2 = finetune_config(config, pruned)

    def init_state(fresh: train.TrainState) -> train.TrainState:
      return fresh._replace(params=pruned_params, model_state=state1.model_state)

    report2 = train.train_and_evaluate(config2, os.path.join(workdir, "finetune"),
                                       init_state=init_state)
  result = {
      "train": report1, "pruned": pruned, "pruned_channels": n_pruned, "channels": n_total,
      "pruned_fraction": n_pruned / max(n_total, 1),
      "pruned_test_accuracy": pruned_eval["accuracy"],
      "finetune": report2,
      "test_accuracy": (report2 or {}).get("test_accuracy", pruned_eval["accuracy"]),
  }
  if report2 is not None and "stopped_at_step" in report2:
    return result
  with open(os.path.join(workdir, "pipeline.json"), "w") as f:
    json.dump({k: v for k, v in result.items() if k not in ("train", "finetune")}
              | {"train_test_accuracy": report1["test_accuracy"]}, f, indent=2)
  return result
