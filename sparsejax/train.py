"""The trainer: ``train_and_evaluate(config, workdir)``.

One readable file. A config (``ml_collections.ConfigDict``, see
``configs/default.py``) names a dataset, a model, an optimizer with its
learning-rate schedule, and a sparsity algorithm; this module builds them,
trains with jitted steps, evaluates, checkpoints with orbax (resuming
automatically from the newest good checkpoint) and writes a report.

Sharded training: with ``config.mesh`` set (e.g. ``"data=-1,model=2"``)
the state is placed on that mesh by ``config.sharding_rules`` (see
:mod:`sparsejax.parallel`; optimizer state like its parameters), batches are
split over ``"data"`` and the step is jitted with in/out shardings.
Checkpoints are saved sharded and restored onto whatever mesh the resuming
run names. Without ``config.mesh`` (absent or None) nothing changes.

Workdir contents: ``metrics.jsonl`` (one JSON object per log event),
``checkpoints/`` (orbax), ``report.json``, ``sparsity.png``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from sparsejax import data as data_lib
from sparsejax import masks as masks_lib
from sparsejax import models as models_lib
from sparsejax import optim
from sparsejax import parallel
from sparsejax import tree as tree_lib
from sparsejax import checkpoint as ckpt_lib
from sparsejax import report as report_lib
from sparsejax._util import check_int, check_positive_int, check_real

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "TrainState",
    "train_and_evaluate",
    "make_lr_schedule",
    "make_optimizer",
    "create_train_state",
    "time_train_steps",
]


# ----------------------------------------------------------------------------
# Config validation
# ----------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step", "warmup_cosine")


class Algorithm(NamedTuple):
  """What a sparsity algorithm contributes to a run.

  Attributes:
    before: transforms chained before the optimizer (penalty (sub)gradients).
    after: transforms chained after it (masks, proximal steps).
    prepare_params: optional ``params -> params`` applied to the freshly
      initialised parameters before the optimizer state is created (e.g. the
      BN-scale initialisation a paper prescribes).
    report: optional ``(params, opt_state) -> dict`` merged into
      ``report.json`` at the end (e.g. removable channels).
    eval_params: optional ``(params, opt_state) -> params`` giving the exactly
      sparse parameters an algorithm keeps beside the trained ones (e.g. the
      group lasso's U); the report then adds their ``sparse_test_accuracy``
      and ``sparse_sparsity``.
    epoch_metrics: optional ``(params, opt_state) -> dict[str, float]`` of
      host-side numbers added to every epoch's line in ``metrics.jsonl`` and
      to the printed progress (e.g. the group lasso's sparsity of U and of W
      measured the authors' way), so that a long run's trajectory is on disk.
  """
  before: tuple = ()
  after: tuple = ()
  prepare_params: Any = None
  report: Any = None
  eval_params: Any = None
  epoch_metrics: Any = None


def _algorithm_none(cfg, ctx):
  del cfg, ctx
  return Algorithm()


def _algorithm_magnitude_pruning(cfg, ctx):
  spe = ctx["steps_per_epoch"]
  # The optimizer's count runs 0 .. total_steps - 1: a ramp ending at
  # end_epoch = num_epochs ends on the last step, not one past it (where the
  # final mask update never ran: 86.6% instead of 90%).
  last = ctx["total_steps"] - 1
  end = min(int(round(cfg.get("end_epoch", 1) * spe)), last)
  begin = min(int(round(cfg.get("begin_epoch", 0) * spe)), end)
  every = int(cfg.get("update_every_steps", 100))
  distribution = cfg.get("distribution", "uniform")
  if isinstance(distribution, ml_collections.ConfigDict):
    distribution = distribution.to_dict()
  tx = optim.magnitude_pruning(
      cfg.sparsity, begin_step=begin, end_step=end, update_every=every,
      distribution=distribution, filter_fn=_filter_from_config(cfg))
  return Algorithm(after=(tx,))


# name -> builder(cfg, ctx) -> Algorithm. ``cfg`` is ``config.algorithm``; ctx
# holds steps_per_epoch, total_steps and lr_schedule (an optax schedule).
ALGORITHMS = {
    "none": _algorithm_none,
    "magnitude_pruning": _algorithm_magnitude_pruning,
    "sparse_group_lasso": optim.sparse_group_lasso_from_config,
    "proximal": optim.proximal_from_config,
    "network_slimming": optim.slimming.network_slimming_from_config,
    "slimming_penalty": optim.slimming.slimming_penalty_from_config,
    "channel_mask": optim.slimming.channel_mask_from_config,
    "trained_rank_pruning": optim.trained_rank_pruning_from_config,
}


def _filter_from_config(cfg):
  pattern = cfg.get("filter_regex", None)
  if pattern:
    return tree_lib.all_of(tree_lib.kernels, tree_lib.regex(pattern))
  return None


def _check_choice(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")


def _check_number(name: str, v, **bounds) -> None:
  check_real(name, v, scalar=True, finite=True, **bounds)


def _validate_schedules(config) -> None:
  """Numbers of the optimizer, learning rate, pruning ramp and checkpoints."""
  n = float(config.num_epochs)
  opt, lr = config.optimizer, config.lr
  _check_number("config.lr.base", lr.get("base"), low=0.0, low_open=True)
  _check_number("config.optimizer.weight_decay", opt.get("weight_decay", 0.0), low=0.0)
  if opt.name == "sgd":
    _check_number("config.optimizer.momentum", opt.get("momentum", 0.0), low=0.0, high=1.0,
                  high_open=True)
  if lr.schedule in ("cosine", "warmup_cosine"):
    _check_number("config.lr.final_fraction", lr.get("final_fraction", 0.0), low=0.0, high=1.0)
  if lr.schedule == "warmup_cosine":
    _check_number("config.lr.warmup_epochs", lr.get("warmup_epochs", 1), low=0.0)
  if lr.schedule == "step":
    _check_number("config.lr.factor", lr.get("factor", 0.1), low=0.0, low_open=True)
    for i, e in enumerate(lr.get("boundaries_epochs", ())):
      # A boundary at or past the end never applies: a shortened num_epochs left
      # the full recipe's boundaries behind (e.g. 81/122 of 164 in a 20-epoch run).
      _check_number(f"config.lr.boundaries_epochs[{i}]", e, low=0.0, high=n, low_open=True,
                    high_open=True)
  alg = config.algorithm
  if alg.name == "magnitude_pruning":
    begin, end = alg.get("begin_epoch", 0), alg.get("end_epoch", 1)
    _check_number("config.algorithm.begin_epoch", begin, low=0.0)
    if not (isinstance(end, (int, float)) and not isinstance(end, bool) and begin <= end <= n):
      raise ValueError(
          f"config.algorithm.end_epoch must lie in [begin_epoch={begin!r}, num_epochs={n:g}] "
          f"(the sparsity ramp ends there; past the end the run never reaches "
          f"sparsity={alg.get('sparsity')!r}), got {end!r}")
  ccfg = config.get("checkpoint", None)
  if ccfg is not None:
    every = ccfg.get("every_steps", 0)
    check_int("config.checkpoint.every_steps", every, hint=" (0: once per epoch)")
    check_positive_int("config.checkpoint.keep", ccfg.get("keep", 3))


def validate_config(config) -> None:
  """Checks names and numbers in ``config`` before any data is loaded or model built."""
  if "search" in config or "model" not in config or "name" not in config.model:
    raise ValueError("this config has no config.model.name" + (
        " and has a config.search section: it is an architecture-search config, run it with "
        "scripts/search.py" if "search" in config else "") + "; scripts/train.py needs a "
        "training config such as configs/default.py")
  _check_choice("config.dataset", config.dataset, data_lib.DATASETS)
  _check_choice("config.model.name", config.model.name, models_lib.MODELS)
  _check_choice("config.algorithm.name", config.algorithm.name, tuple(ALGORITHMS))
  _check_choice("config.optimizer.name", config.optimizer.name, OPTIMIZERS)
  _check_choice("config.lr.schedule", config.lr.schedule, LR_SCHEDULES)
  v = config.get("num_epochs")
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
    raise ValueError(f"config.num_epochs must be a positive finite number, got {v!r}")
  check_positive_int("config.batch_size", config.get("batch_size"))
  check_positive_int("config.eval_batch_size", config.get("eval_batch_size", 1000))
  check_positive_int("config.stop_after_steps", config.get("stop_after_steps"), optional=True)
  dcfg = config.get("data", ml_collections.ConfigDict())
  for key in ("train_subset", "test_subset"):
    check_positive_int(f"config.data.{key}", dcfg.get(key), optional=True)
  augment = dcfg.get("augment", False)
  if not isinstance(augment, (bool, np.bool_)):
    raise ValueError(f"config.data.augment must be True or False, got {augment!r}")
  if augment and config.dataset not in data_lib.AUGMENTABLE:
    raise ValueError(f"config.data.augment=True is only defined for {list(data_lib.AUGMENTABLE)} "
                     f"(pad-4 crop and flip), got config.dataset={config.dataset!r}")
  check_int("config.seed", config.get("seed", 0))
  m = config.get("compact_multiple_of", 1)
  if isinstance(m, bool) or not isinstance(m, int) or m < 1:
    raise ValueError(f"config.compact_multiple_of must be a positive int, got {m!r}")
  _validate_schedules(config)
  parallel.check_config(config)


# ----------------------------------------------------------------------------
# Optimizer and schedules
# ----------------------------------------------------------------------------


def _warmup_steps(config, steps_per_epoch: int) -> int:
  # Rounded like every other epoch -> step conversion (int() made 0.29 * 100 into 28).
  return int(round(config.lr.get("warmup_epochs", 1) * steps_per_epoch))


def make_lr_schedule(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  lr = config.lr
  base = float(lr.base)
  if lr.schedule == "constant":
    return optax.constant_schedule(base)
  if lr.schedule == "cosine":
    return optax.cosine_decay_schedule(base, max(total_steps, 1), alpha=lr.get("final_fraction", 0.0))
  if lr.schedule == "warmup_cosine":
    warmup = _warmup_steps(config, steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(
        0.0, base, warmup, max(total_steps, warmup + 1),
        end_value=base * lr.get("final_fraction", 0.0))
  # "step": multiply by `factor` at each boundary, given in epochs; boundaries
  # that round to the same step multiply there together.
  boundaries: dict[int, float] = {}
  for e in lr.boundaries_epochs:
    at = int(round(e * steps_per_epoch))
    boundaries[at] = boundaries.get(at, 1.0) * float(lr.get("factor", 0.1))
  return optax.piecewise_constant_schedule(base, boundaries)


def make_algorithm(config, lr_schedule, steps_per_epoch: int, total_steps: int) -> Algorithm:
  ctx = dict(steps_per_epoch=steps_per_epoch, total_steps=total_steps, lr_schedule=lr_schedule)
  return ALGORITHMS[config.algorithm.name](config.algorithm, ctx)


def make_optimizer(config, lr_schedule, algorithm: Algorithm):
  """``chain(algorithm.before..., weight decay, optimizer, algorithm.after...)``."""
  opt = config.optimizer
  parts = list(algorithm.before)
  wd = float(opt.get("weight_decay", 0.0))
  if opt.name == "sgd":
    if wd:
      parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.sgd(lr_schedule, momentum=opt.get("momentum", 0.9) or None,
                           nesterov=opt.get("nesterov", False)))
  elif opt.name == "adam":
    if wd:
      parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.adam(lr_schedule))
  else:
    parts.append(optax.adamw(lr_schedule, weight_decay=wd))
  parts.extend(algorithm.after)
  return optax.chain(*parts)


# ----------------------------------------------------------------------------
# Train state and steps
# ----------------------------------------------------------------------------


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar
  params: Any  # nnx.State of arrays (nnx.Param)
  model_state: Any  # nnx.State of arrays (batch statistics and the like)
  opt_state: Any


def _model_kwargs(config, dataset) -> dict:
  kwargs = dict(config.model.get("kwargs", {}) or {})
  h, w, c = dataset.images.shape[1:]
  name = config.model.name
  if name == "lenet300_100":
    kwargs.setdefault("in_features", h * w * c)
  elif name == "lenet5" or name.startswith("vgg"):
    kwargs.setdefault("in_channels", c)
    kwargs.setdefault("input_size", (h, w))
  else:
    kwargs.setdefault("in_channels", c)
  return kwargs


def create_train_state(model, tx, prepare_params=None, *, mesh=None, rules=(),
                       indivisible: str = "error") -> tuple[TrainState, Any, Any]:
  """Splits ``model``; returns (state, train graphdef, eval graphdef).

  With a ``mesh``, params and model state are placed by ``rules`` and the
  optimizer state is created sharded like the params it belongs to
  (:mod:`sparsejax.parallel`).
  """
  model.train()
  train_def, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_def, _, _ = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)
  if prepare_params is not None:
    params = prepare_params(params)
  if mesh is None:
    state = TrainState(step=jnp.zeros([], jnp.int32), params=params, model_state=rest,
                       opt_state=tx.init(params))
    return state, train_def, eval_def
  params = parallel.shard_params(params, mesh, rules, indivisible=indivisible)
  rest = parallel.shard_params(rest, mesh, rules, indivisible=indivisible)
  step = jax.device_put(jnp.zeros([], jnp.int32), parallel.replicated(mesh))
  state = TrainState(step=step, params=params, model_state=rest,
                     opt_state=parallel.init_opt_state(tx, params, mesh))
  return state, train_def, eval_def


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(train_def, tx, shardings=None):
  """The jitted step ``(state, batch) -> (state, metrics)``.

  ``shardings``: optional ``(state_shardings, batch_sharding)``; the step then
  keeps the state where it is and returns replicated metrics.
  """
  def loss_fn(params, model_state, batch):
    model = nnx.merge(train_def, params, model_state)
    logits = model(batch["image"])
    loss = _cross_entropy(logits, batch["label"])
    _, new_model_state = nnx.split(model, nnx.Param, ...)[1:]
    return loss, (logits, nnx.as_pure(new_model_state))

  def train_step(state: TrainState, batch):
    (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = jnp.sum(jnp.argmax(logits, -1) == batch["label"])
    metrics = {"loss_sum": loss * batch["label"].shape[0], "correct": correct,
               "count": batch["label"].shape[0]}
    return TrainState(state.step + 1, params, model_state, opt_state), metrics

  if shardings is None:
    return jax.jit(train_step)
  state_shardings, batch_sharding = shardings
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, parallel.replicated(batch_sharding.mesh)))


def make_eval_step(eval_def):
  @jax.jit
  def eval_step(params, model_state, batch):
    model = nnx.merge(eval_def, params, model_state)
    logits = model(batch["image"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"loss_sum": losses.sum(),
            "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"]),
            "count": batch["label"].shape[0]}
  return eval_step


def time_train_steps(variants: dict, make_model, batch, repeats: int, *, warmup: int = 3,
                     prepare_params=None, verbose: bool = False) -> tuple[dict, dict]:
  """Seconds per train step of each optimizer in ``variants``, timed round robin.

  Every variant trains its own fresh ``make_model()`` on the same ``batch``;
  after ``warmup`` compiled steps each, the variants take turns, one step per
  turn for ``repeats`` rounds, so a change of machine load hits all of them
  alike and their ratios stay meaningful on a shared machine.

  Args:
    variants: ``{name: optax.GradientTransformation}``.
    make_model: builds the (identical) NNX model for each variant.
    batch: ``{"image": ..., "label": ...}``, reused for every step.
    repeats: timed steps per variant (at least 1).
    warmup: untimed steps per variant before timing (compilation included).
    prepare_params: passed to :func:`create_train_state`.
    verbose: print a line as each variant finishes compiling.

  Returns:
    ``({name: [seconds per timed step]}, {name: final TrainState})``.
  """
  if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be a positive int, got {repeats!r}")
  if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
    raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
  steps, states = {}, {}
  for name, tx in variants.items():
    state, train_def, _ = create_train_state(make_model(), tx, prepare_params)
    steps[name] = make_train_step(train_def, tx)
    for _ in range(warmup):
      state, metrics = steps[name](state, batch)
      jax.block_until_ready((state.params, metrics))
    states[name] = state
    if verbose:
      print(f"compiled: {name}", flush=True)
  times = {name: [] for name in variants}
  for _ in range(repeats):
    for name in variants:
      t = time.perf_counter()
      states[name], metrics = steps[name](states[name], batch)
      jax.block_until_ready((states[name].params, metrics))
      times[name].append(time.perf_counter() - t)
  return times, states

def _compact_final_model(config, eval_def, params, model_state, test_ds,
                         save_dir: str | None) -> dict:
  """Removes the final model's dead channels (``config.compact``); the report entry.

  The compacted model is saved to ``save_dir`` (``workdir/compacted`` on the
  first process; ``scripts/eval.py`` loads it) and evaluated on the test set,
  so the report shows that removing the channels changed nothing.
  """
  from sparsejax import compact as compact_lib  # heavy; only when asked for
  model = nnx.merge(eval_def, params, model_state)
  sample = next(data_lib.eval_batches(test_ds, batch_size=1))["image"]
  small, entry = compact_lib.report(model, sample, save_dir=save_dir, name=config.model.name,
                                    multiple_of=config.get("compact_multiple_of", 1))
  small_def, small_params, small_rest = nnx.split(small, nnx.Param, ...)
  entry["test_accuracy"] = evaluate(make_eval_step(small_def), nnx.as_pure(small_params),
                                    nnx.as_pure(small_rest), test_ds,
                                    config.get("eval_batch_size", 1000))["accuracy"]
  return entry


def load_data(config, split: str) -> data_lib.Dataset:
  """``config.dataset``'s ``split``, cut to ``config.data.<split>_subset`` if set.

  The training subset is drawn with ``config.seed``; the test subset always
  with seed 0, so that runs with different seeds are scored on the same
  images. A subset at least as large as the split (e.g. the 4,000-image
  offline MNIST sample) keeps it whole.
  """
  dcfg = config.get("data", ml_collections.ConfigDict())
  ds = data_lib.load(config.dataset, split, data_dir=dcfg.get("dir"),
                     tfds_data_dir=dcfg.get("tfds_data_dir"))
  n = dcfg.get(f"{split}_subset")
  if n is not None and int(n) < len(ds.labels):
    ds = data_lib.subset(ds, int(n), seed=config.seed if split == "train" else 0)
  return ds


def evaluate(eval_step, params, model_state, dataset, batch_size: int) -> dict:
  totals = None
  for batch in data_lib.eval_batches(dataset, batch_size=batch_size):
    m = eval_step(params, model_state, batch)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  totals = jax.device_get(totals)
  n = int(totals["count"])
  return {"loss": float(totals["loss_sum"]) / n, "accuracy": float(totals["correct"]) / n}


# ----------------------------------------------------------------------------
# Workdir, metrics
# ----------------------------------------------------------------------------


def _prepare_workdir(workdir: str) -> str:
  workdir = os.path.abspath(os.path.expanduser(str(workdir)))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"workdir {workdir!r} is not writable ({e.strerror or e}); "
                     "pass a directory you can create and write to") from None
  return workdir


# Config fields that do not change what a run computes: a resumed run may differ in them.
# ``pipeline`` (the three-stage slimming pipeline's section) does not change stage
# 1, and what it changes in stage 3 is recorded there as algorithm.pruned,
# num_epochs, lr, optimizer and batch_size.
_RESUME_FREE = ("stop_after_steps", "progress_bar", "checkpoint", "eval_batch_size", "compact",
                "compact_multiple_of", "mesh", "sharding_rules", "sharding_indivisible",
                "distributed", "data.dir", "data.tfds_data_dir", "pipeline")


def _is_resume_free(key: str) -> bool:
  return any(key == f or key.startswith(f + ".") for f in _RESUME_FREE)


def _result_fields(config) -> dict:
  """The config as flat ``{"a.b": value}`` JSON values, without :data:`_RESUME_FREE`."""
  flat = {}

  def walk(node, prefix):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if _is_resume_free(key):
        continue
      if isinstance(v, dict):
        walk(v, key + ".")
      else:
        flat[key] = json.loads(json.dumps(v, default=str))
  walk(config.to_dict() if hasattr(config, "to_dict") else dict(config), "")
  return flat


def check_run_config(workdir: str, config, *, resuming: bool, write: bool = True) -> None:
  """Refuses to resume a run of a different config; records the config otherwise.

  ``workdir/run_config.json`` holds the fields that decide a run's result. A
  run resuming from a checkpoint must match them (a changed ``num_epochs``,
  learning rate, seed, ... would continue someone else's run and give a result
  no uninterrupted run gives); fields in :data:`_RESUME_FREE` may differ.

  Raises:
    ValueError: naming the fields that differ, with both values.
  """
  path = os.path.join(workdir, "run_config.json")
  now = _result_fields(config)
  if resuming and os.path.exists(path):
    with open(path) as f:
      # Fields made resume-free since the record was written do not count.
      saved = {k: v for k, v in json.load(f).items() if not _is_resume_free(k)}
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k, "<unset>") != now.get(k, "<unset>"))
    if diff:
      shown = "; ".join(f"{k}: {saved.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}"
                        for k in diff[:6])
      raise ValueError(
          f"{workdir} holds a run of a different config ({len(diff)} field(s) differ: {shown}); "
          f"resuming it would not give this config's result. Use a fresh --workdir")
    return
  if write:
    with open(path + ".tmp", "w") as f:
      json.dump(now, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


class MetricsWriter:
  """Appends JSON lines to ``metrics.jsonl``; on resume drops lines past ``step``.

  ``epoch_seconds`` holds the epoch times of the kept lines, so that a resumed
  run reports the time per epoch of the whole run. With ``enabled=False``
  (every process but the first of a multi-host run) it writes nothing.
  """

  def __init__(self, workdir: str, resume_step: int, *, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self.epoch_seconds: list[float] = []
    if enabled and os.path.exists(self.path):
      with open(self.path) as f:
        lines = f.read().splitlines()
      kept = []
      for i, line in enumerate(lines):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          if i == len(lines) - 1:  # a crash mid-write leaves a partial last line
            logging.warning("dropping the truncated last line of %s", self.path)
            continue
          raise ValueError(f"{self.path} line {i + 1} is not JSON ({e}): {line[:80]!r}") from e
        if record.get("step", 0) <= resume_step:
          kept.append(line + "\n")
          if "epoch_seconds" in record:
            self.epoch_seconds.append(float(record["epoch_seconds"]))
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)  # all or nothing

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def _pruned_fraction(params) -> float:
  """Fraction of exact zeros among the conv/dense kernels."""
  zeros = total = 0
  for path, leaf in tree_lib.leaves_with_paths(params):
    if tree_lib.kernels(path, leaf):
      a = np.asarray(leaf)
      zeros += int((a == 0).sum())
      total += a.size
  return zeros / max(total, 1)


# ----------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       init_state=None) -> dict:
  """Trains and evaluates the model the config describes; returns the report.

  Resumes from the newest good checkpoint in ``workdir/checkpoints``. With
  ``config.stop_after_steps`` set, stops early after that many steps (as if
  interrupted), for testing resumption.

  Args:
    config: the run's config (see ``configs/default.py``).
    workdir: where checkpoints, metrics and the report go.
    init_state: optional ``TrainState -> TrainState`` applied to the fresh
      state before training (not on resume, where the checkpoint wins); used
      by multi-stage pipelines to start from an earlier stage's weights.
  """
  validate_config(config)
  # Before anything touches a device (even jax.process_index() in _prepare_workdir):
  # jax.distributed.initialize refuses to run once the backend is up.
  parallel.initialize_distributed(config)  # no-op unless config.distributed
  workdir = _prepare_workdir(workdir)
  t_start = time.time()
  is_main = jax.process_index() == 0  # only the first process writes metrics and reports
  mesh = parallel.mesh_from_config(config)  # None unless config.mesh

  # --- data -------------------------------------------------------------------
  dcfg = config.get("data", ml_collections.ConfigDict())
  train_ds, test_ds = load_data(config, "train"), load_data(config, "test")
  print(f"data: {config.dataset} ({len(train_ds.labels)} train / {len(test_ds.labels)} test) "
        f"from {train_ds.source}", flush=True)
  steps_per_epoch = data_lib.steps_per_epoch(train_ds, config.batch_size)
  total_steps = int(round(config.num_epochs * steps_per_epoch))
  if total_steps < 1:
    raise ValueError(f"config.num_epochs={config.num_epochs!r} is {total_steps} steps at "
                     f"{steps_per_epoch} steps per epoch; it must be at least one step")
  if config.lr.schedule == "warmup_cosine":
    warmup = _warmup_steps(config, steps_per_epoch)
    if warmup >= total_steps:
      raise ValueError(f"config.lr.warmup_epochs={config.lr.get('warmup_epochs', 1)!r} is "
                       f"{warmup} steps, not fewer than the run's {total_steps} steps")

  # --- model and optimizer ---------------------------------------------------
  model = models_lib.get_model(config.model.name, num_classes=train_ds.num_classes,
                               rngs=nnx.Rngs(config.seed), **_model_kwargs(config, train_ds))
  lr_schedule = make_lr_schedule(config, steps_per_epoch, total_steps)
  algorithm = make_algorithm(config, lr_schedule, steps_per_epoch, total_steps)
  tx = make_optimizer(config, lr_schedule, algorithm)
  shardings = None
  if mesh is None:
    state, train_def, eval_def = create_train_state(model, tx, algorithm.prepare_params)
  else:
    state, train_def, eval_def = create_train_state(
        model, tx, algorithm.prepare_params, mesh=mesh, rules=parallel.rules_from_config(config),
        indivisible=config.get("sharding_indivisible", "error"))
    batch_sharding = parallel.batch_sharding(mesh)
    parallel.process_batch_slice(batch_sharding, config.batch_size,  # checks divisibility
                                 argname="config.batch_size")
    shardings = (jax.tree.map(lambda x: x.sharding, state), batch_sharding)
  if init_state is not None:
    state = init_state(state)
    if shardings is not None:
      state = jax.device_put(state, shardings[0])
  train_step, eval_step = make_train_step(train_def, tx, shardings), make_eval_step(eval_def)

  # --- checkpoints -------------------------------------------------------------
  ccfg = config.get("checkpoint", ml_collections.ConfigDict())
  manager = ckpt_lib.CheckpointManager(
      os.path.join(workdir, "checkpoints"), keep=int(ccfg.get("keep", 3)))
  if manager.all_steps():
    # A different config first gets the message naming the fields that differ
    # (restoring first failed on the changed tree and moved the checkpoints aside).
    check_run_config(workdir, config, resuming=True, write=False)
  restored = manager.restore_latest(state, return_extra=True)
  carried, carried_seconds = None, 0.0  # the interrupted epoch's running totals
  # Wall-clock seconds of the earlier invocations up to the checkpoint resumed
  # from (None: a fresh run, or a checkpoint saved before they were recorded).
  carried_wall = None
  if restored is not None:
    state, ckpt_extra = restored
    logging.info("resumed from step %d", int(state.step))
    if "wall_seconds" in ckpt_extra:
      carried_wall = float(ckpt_extra["wall_seconds"])
    if "epoch_totals" in ckpt_extra:
      carried = {k: np.asarray(v, dtype) for k, (dtype, v) in ckpt_extra["epoch_totals"].items()}
      carried_seconds = float(ckpt_extra.get("epoch_seconds", 0.0))
  start_step = int(state.step)
  check_run_config(workdir, config, resuming=restored is not None, write=is_main)
  if start_step > total_steps:
    raise ValueError(
        f"{os.path.join(workdir, 'checkpoints')} holds a checkpoint at step {start_step}, past "
        f"this config's {total_steps} steps (config.num_epochs={config.num_epochs!r}); "
        f"use a fresh --workdir")
  writer = MetricsWriter(workdir, start_step, enabled=is_main)
  ckpt_every = int(ccfg.get("every_steps", 0) or steps_per_epoch)

  # --- train --------------------------------------------------------------------
  stop_after = config.get("stop_after_steps", None)
  if shardings is None:
    batches = data_lib.train_batches(train_ds, batch_size=config.batch_size, seed=config.seed,
                                     augment=bool(dcfg.get("augment", False)),
                                     start_step=start_step)
  else:  # this process's rows of each global batch, joined into global arrays
    local_batches = parallel.process_train_batches(
        train_ds, sharding=shardings[1], batch_size=config.batch_size, seed=config.seed,
        augment=bool(dcfg.get("augment", False)), start_step=start_step)
    batches = (parallel.make_global_batch(b, shardings[1], config.batch_size)
               for b in local_batches)
  progress = report_lib.progress_bar(total_steps, start_step, enabled=config.get("progress_bar", True))
  acc = carried
  epoch_t0 = time.time() - carried_seconds

  # The run's wall time at its newest checkpoint, over all invocations: a resumed
  # run reports the whole run's time, and a finished run opened again the same.
  wall = {"at_save": carried_wall}

  def save(step):
    extra = {}
    if acc is not None:  # mid-epoch: keep the epoch's totals so far for the resumed run
      extra = {"epoch_totals": {k: [str(np.asarray(v).dtype), np.asarray(v).item()]
                                for k, v in jax.device_get(acc).items()},
               "epoch_seconds": time.time() - epoch_t0}
    extra["wall_seconds"] = (carried_wall or 0.0) + time.time() - t_start
    if step not in manager.all_steps():  # the save below keeps an earlier one of this step
      wall["at_save"] = extra["wall_seconds"]
    manager.save(step, state, extra=extra)

  epoch_times = list(writer.epoch_seconds)  # earlier epochs of a resumed run
  step = start_step
  while step < total_steps:
    batch = next(batches)
    state, m = train_step(state, batch)
    acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
    step += 1
    progress.update(1)
    end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
    if end_of_epoch:
      jax.block_until_ready(state.params)
      epoch_times.append(time.time() - epoch_t0)
      train_m = jax.device_get(acc)
      acc = None
      test_m = evaluate(eval_step, state.params, state.model_state, test_ds,
                        config.get("eval_batch_size", 1000))
      record = {
          "step": step, "epoch": step / steps_per_epoch,
          "train_loss": float(train_m["loss_sum"]) / int(train_m["count"]),
          "train_accuracy": float(train_m["correct"]) / int(train_m["count"]),
          "test_loss": test_m["loss"], "test_accuracy": test_m["accuracy"],
          "sparsity": _pruned_fraction(state.params),
          "lr": float(lr_schedule(step - 1)), "epoch_seconds": epoch_times[-1],
      }
      extra_m = ({k: float(v) for k, v in algorithm.epoch_metrics(state.params, state.opt_state).items()}
                 if algorithm.epoch_metrics else {})
      record.update(extra_m)
      writer.write(record)
      progress.write(
          f"epoch {record['epoch']:6.2f}  train loss {record['train_loss']:.4f} "
          f"acc {record['train_accuracy']:.4f}  test acc {record['test_accuracy']:.4f}  "
          f"sparsity {record['sparsity']:.3f}"
          + "".join(f"  {k} {v:.4f}" for k, v in extra_m.items())
          + f"  ({epoch_times[-1]:.1f}s)")
      epoch_t0 = time.time()
    if step % ckpt_every == 0 or step == total_steps:
      save(step)
    if stop_after is not None and step >= start_step + int(stop_after) and step < total_steps:
      save(step)
      manager.wait()
      progress.close()
      logging.info("stopping after %d steps as config.stop_after_steps asks", int(stop_after))
      return {"stopped_at_step": step}
  manager.wait()
  progress.close()

  # --- report ---------------------------------------------------------------------
  test_m = evaluate(eval_step, state.params, state.model_state, test_ds,
                    config.get("eval_batch_size", 1000))
  summary = masks_lib.summary(state.params)
  extra = {"params_sha256": ckpt_lib.tree_digest(state.params)}
  if algorithm.report:
    extra.update(algorithm.report(state.params, state.opt_state))
  if algorithm.eval_params:
    sparse = jax.jit(algorithm.eval_params)(state.params, state.opt_state)
    sparse_m = evaluate(eval_step, sparse, state.model_state, test_ds,
                        config.get("eval_batch_size", 1000))
    extra["sparse_test_accuracy"] = sparse_m["accuracy"]
    extra["sparse_test_loss"] = sparse_m["loss"]
    extra["sparse_sparsity"] = _pruned_fraction(sparse)
  if config.get("compact", False):
    final_params = sparse if algorithm.eval_params else state.params
    extra["compaction"] = _compact_final_model(
        config, eval_def, jax.device_get(final_params), jax.device_get(state.model_state),
        test_ds, os.path.join(workdir, "compacted") if is_main else None)
  report = report_lib.build_report(
      config=config, test=test_m, summary=summary, params=state.params,
      dataset_source=train_ds.source, steps=total_steps, steps_per_epoch=steps_per_epoch,
      epoch_seconds=epoch_times,
      wall_seconds=wall["at_save"] if wall["at_save"] is not None else time.time() - t_start,
      extra=extra)
  if is_main:
    report_lib.write_report(workdir, report, summary)
  return report
