"""The search loop: ``run_search(config, workdir)`` (used by ``scripts/search.py``).

A config (``configs/darts_cifar10.py``, ``configs/rarts_cifar10.py``) names a
dataset, the search network, the method and its optimizers. The training
split (optionally a seeded subset) is halved by a seeded permutation
(:func:`sparsejax.data.train_val_split`): one half feeds the weights
(``L_train``), the other the architecture (``L_val``). An epoch is
``min(len(train_half), len(val_half)) // batch_size`` steps (capped by
``config.max_steps_per_epoch``), each taking one batch of each half.

Workdir contents:

* ``metrics.jsonl``: per epoch the mean training / validation loss and
  accuracy over the epoch's steps (as the step computed them: training loss at
  the weights before their update; see the algorithms' docstrings), seconds
  of the epoch (compilation happens before the first epoch, but with
  ``compile="pass"`` the first step also compiles the small eager operations),
  the weights' learning rate, the peak memory and where it comes from
  (``memory_source``), and the genotype derived at the epoch's end;
* ``genotype.json``: the genotype derived from the final logits;
* ``alphas.npz``: the logits after each epoch (``normal``, ``reduce``:
  ``(epochs + 1, num_edges, num_ops)``, row 0 the initial logits), ``epochs``,
  ``primitives``;
* ``alphas.png``: softmax weights per edge over the epochs;
* ``report.json``: the summary (method, genotype, seconds per epoch,
  compilation seconds, memory, final metrics, config).

Compilation (``config.compile``): ``"step"`` jits the whole step (XLA sees
everything and drops unused gradients, but compiling a DARTS step of the
8-cell network takes minutes on a CPU, and second-order DARTS compiles 5
forward-backward passes); ``"pass"`` jits only the gradient pass of the
network (over the weights raveled into one vector) and runs the step's
optimizer arithmetic eagerly around it: one compilation, shared by all
passes, and, through ``pass_cache``, by several searches on the same network
in one process. ``"pass"`` does not support ``hessian="exact"``.

Timing: every step is timed to completion (``block_until_ready``); the
reported ``seconds_per_epoch`` is ``steps_per_epoch`` times the median step
time, leaving out the very first step (it may include one-off work).

Memory: ``step_peak_bytes``, the device bytes a step needs beyond its data
batches: with ``"step"``, XLA's memory analysis of the compiled step
(arguments + outputs + temporaries, less the two batches' bytes); with ``"pass"``, the search state plus,
maximised over the step's gradient passes, the arrays the step holds at the
pass (``jax.live_arrays`` minus those alive when the step began) and the
pass's outputs and XLA temporaries. Also reported: ``state_bytes`` and the
process's peak memory (``peak_memory_bytes``: the device's
``peak_bytes_in_use`` where the backend reports it, else the process's max
resident set size, which includes the dataset, XLA and Python). No
checkpointing or resumption.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

from sparsejax import data as data_lib
from sparsejax._util import check_positive_int
from sparsejax.search import algorithms
from sparsejax.search.genotypes import derive_genotype, genotype_str, save_genotype
from sparsejax.search.space import CELL_TYPES, SearchNetwork, check_primitives

__all__ = [
    "METHODS",
    "COMPILE_MODES",
    "validate_config",
    "val_optimizer_config",
    "method_label",
    "make_weights_tx",
    "make_alphas_tx",
    "make_loss_fn",
    "load_halves",
    "Search",
    "run_search",
    "edge_names",
    "plot_alphas",
]

METHODS = ("darts", "rarts")
COMPILE_MODES = ("step", "pass")


# ----------------------------------------------------------------------------
# Config validation
# ----------------------------------------------------------------------------


def _choice(name: str, v: Any, allowed: tuple) -> None:
  if isinstance(v, bool) or v not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {v!r}")


def _number(name: str, v: Any, *, positive: bool = False) -> None:
  ok = not isinstance(v, bool) and isinstance(v, (int, float)) and np.isfinite(v) and (
      v > 0 if positive else v >= 0)
  if not ok:
    raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                     f"got {v!r}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks a search config's names and numbers before any data is loaded.

  Raises:
    ValueError: naming the field, its value and what is allowed.
  """
  if "search" not in config:
    raise ValueError("this config has no config.search section: it is a training config, run "
                     "it with scripts/train.py; scripts/search.py needs a search config such as "
                     "configs/rarts_cifar10.py")
  _choice("config.dataset", config.dataset, tuple(data_lib.DATASETS))
  seed = config.get("seed", 0)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"config.seed must be an integer >= 0, got {seed!r}")
  s = config.search
  _choice("config.search.method", s.method, METHODS)
  mode = config.get("compile", "step")
  _choice("config.compile", mode, COMPILE_MODES)
  if s.method == "darts":
    _choice("config.search.order", s.order, (1, 2))
    _choice("config.search.hessian", s.hessian, algorithms.HESSIAN_MODES)
    if s.order == 2 and s.hessian == "exact" and mode == "pass":
      raise ValueError("config.search.hessian='exact' differentiates through the virtual step "
                       "and needs config.compile='step', got config.compile='pass'")
    if s.get("xi") is not None:
      _number("config.search.xi", s.xi)
    _number("config.search.fd_epsilon", s.get("fd_epsilon", 0.01), positive=True)
  else:
    _choice("config.search.alpha_update", s.get("alpha_update", "gauss_seidel"),
            algorithms.ALPHA_UPDATES)
  for key in ("lam", "beta"):
    _number(f"config.search.{key}", s.get(key))
  _number("config.search.alpha_init_scale", s.get("alpha_init_scale", 1e-3))
  for key in ("num_cells", "channels", "steps", "multiplier", "stem_multiplier"):
    check_positive_int(f"config.model.{key}", config.model.get(key))
  if config.model.multiplier > config.model.steps:
    raise ValueError(f"config.model.multiplier must be <= config.model.steps="
                     f"{config.model.steps}, got {config.model.multiplier}")
  check_primitives(tuple(config.model.primitives))
  check_positive_int("config.batch_size", config.batch_size)
  check_positive_int("config.num_epochs", config.num_epochs)
  frac = config.data.get("train_fraction", 0.5)
  if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
    raise ValueError(f"config.data.train_fraction must lie in (0, 1), got {frac!r}")
  cap = config.get("max_steps_per_epoch", None)
  if cap is not None:
    check_positive_int("config.max_steps_per_epoch", cap)
  for name in ("optimizer", "arch_optimizer", "val_optimizer"):
    ocfg = val_optimizer_config(config) if name == "val_optimizer" else config.get(name, None)
    if ocfg is None:  # val_optimizer: optional (defaults to the weights' optimizer)
      continue
    _number(f"config.{name}.lr", ocfg.lr, positive=True)
    for key in ("final_lr", "weight_decay", "grad_clip", "momentum"):
      if ocfg.get(key) is not None:
        _number(f"config.{name}.{key}", ocfg.get(key))
    momentum = ocfg.get("momentum")
    if momentum is not None and not momentum < 1:  # 1 never forgets a gradient; more diverges
      raise ValueError(f"config.{name}.momentum must lie in [0, 1), got {momentum!r}")
  for key in ("b1", "b2"):
    b = config.arch_optimizer.get(key, 0.9)
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1:
      raise ValueError(f"config.arch_optimizer.{key} must lie in [0, 1), got {b!r}")
  n = config.get("data", ml_collections.ConfigDict()).get("train_subset")
  if n is not None:
    check_positive_int("config.data.train_subset", n)


def val_optimizer_config(
    config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """RARTS's optimizer of ``y``: ``config.optimizer`` overridden by the set fields of
  ``config.val_optimizer`` (a field left ``None`` follows ``config.optimizer``, so
  ``--config.optimizer.lr=...`` moves both copies); ``None`` without ``config.val_optimizer``.
  """
  vcfg = config.get("val_optimizer", None)
  if vcfg is None:
    return None
  merged = config.optimizer.to_dict()
  merged.update({k: v for k, v in vcfg.to_dict().items() if v is not None})
  return ml_collections.ConfigDict(merged)


def method_label(config: ml_collections.ConfigDict) -> str:
  """``"darts-1"``, ``"darts-2"`` (``"darts-2-exact"``), ``"rarts"`` or ``"rarts-jacobi"``."""
  s = config.search
  if s.method == "darts":
    return f"darts-{s.order}" + ("-exact" if s.order == 2 and s.hessian == "exact" else "")
  return "rarts" + ("-jacobi" if s.get("alpha_update", "gauss_seidel") == "jacobi" else "")


# ----------------------------------------------------------------------------
# Optimizers and the loss
# ----------------------------------------------------------------------------


def make_weights_tx(ocfg: ml_collections.ConfigDict,
                    total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """DARTS's weight optimizer: clip, weight decay, SGD with momentum, cosine lr.

  ``chain(clip_by_global_norm(grad_clip), add_decayed_weights(weight_decay),
  sgd(cosine(lr -> final_lr), momentum))``; the cosine runs per step over
  ``total_steps`` (DARTS steps it per epoch).
  """
  lr, final_lr = float(ocfg.lr), float(ocfg.get("final_lr", 0.0))
  schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=final_lr / lr)
  parts = []
  if ocfg.get("grad_clip"):
    parts.append(optax.clip_by_global_norm(float(ocfg.grad_clip)))
  if ocfg.get("weight_decay"):
    parts.append(optax.add_decayed_weights(float(ocfg.weight_decay)))
  parts.append(optax.sgd(schedule, momentum=float(ocfg.get("momentum", 0.0)) or None))
  return optax.chain(*parts), schedule


def make_alphas_tx(acfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """DARTS's architecture optimizer: L2 weight decay added to the gradient, then Adam."""
  parts = []
  if acfg.get("weight_decay"):
    parts.append(optax.add_decayed_weights(float(acfg.weight_decay)))
  parts.append(optax.adam(float(acfg.lr), b1=float(acfg.get("b1", 0.9)),
                          b2=float(acfg.get("b2", 0.999))))
  return optax.chain(*parts)


def make_loss_fn(graphdef: Any, rest: Any) -> algorithms.LossFn:
  """Cross-entropy of the search network ``(weights, alphas, batch) -> (loss, aux)``.

  ``aux`` holds ``correct`` and ``count`` of the batch.
  """
  def loss_fn(weights, alphas, batch):
    net = nnx.merge(graphdef, weights, rest)
    logits = net(batch["image"], alphas)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    correct = jnp.sum(jnp.argmax(logits, -1) == batch["label"])
    return loss, {"correct": correct, "count": jnp.asarray(batch["label"].shape[0])}
  return loss_fn


# ----------------------------------------------------------------------------
# Memory, plots
# ----------------------------------------------------------------------------


def _tree_bytes(tree: Any) -> int:
  return int(sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes
                 for x in jax.tree.leaves(tree)))


def _live_bytes() -> int:
  return int(sum(x.nbytes for x in jax.live_arrays()))


def _peak_memory() -> tuple[int, str]:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use (jax memory_stats)"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
  return int(rss), "process max RSS (resource.getrusage; whole process incl. data and XLA)"


def _analysis(compiled: Any) -> dict[str, int] | None:
  try:
    a = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if a is None:
    return None
  return {"argument": int(a.argument_size_in_bytes), "output": int(a.output_size_in_bytes),
          "temp": int(a.temp_size_in_bytes), "alias": int(a.alias_size_in_bytes)}


class _MeteredPass:
  """A compiled gradient pass that records the bytes alive while a step calls it."""

  def __init__(self, compiled: Any):
    self.compiled = compiled
    a = _analysis(compiled)
    self.pass_bytes = 0 if a is None else a["temp"] + a["output"]
    self.base = 0
    self.peak = 0
    self.calls = 0

  def start_step(self) -> None:
    self.base = _live_bytes()

  def __call__(self, *args):
    self.calls += 1
    self.peak = max(self.peak, _live_bytes() - self.base + self.pass_bytes)
    return self.compiled(*args)


def edge_names(steps: int) -> list[str]:
  """``"node i <- j"`` for every edge, in the order of the logits' rows."""
  return [f"node {i} <- {j}" for i in range(steps) for j in range(2 + i)]


def plot_alphas(history: dict[str, np.ndarray], primitives: tuple[str, ...], steps: int,
                path: str) -> str:
  """Softmax weight of every op on every edge over the epochs, one panel per edge."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names = edge_names(steps)
  fig, axes = plt.subplots(len(names), 2, figsize=(9, 1.4 * len(names) + 1), sharex=True,
                           squeeze=False)
  for col, cell in enumerate(CELL_TYPES):
    logits = history[cell]
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    for e, name in enumerate(names):
      ax = axes[e, col]
      for k, op in enumerate(primitives):
        ax.plot(np.arange(len(w)), w[:, e, k], label=op)
      ax.set_title(f"{cell}: {name}", fontsize=8)
      ax.tick_params(labelsize=7)
  axes[-1, 0].set_xlabel("epoch")
  axes[-1, 1].set_xlabel("epoch")
  axes[0, 1].legend(fontsize=6, loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------


def load_halves(config: ml_collections.ConfigDict) -> tuple[data_lib.Dataset, data_lib.Dataset]:
  """The training split (or its seeded ``config.data.train_subset``), halved by a seeded split."""
  dcfg = config.data
  ds = data_lib.load(config.dataset, "train", data_dir=dcfg.get("dir"),
                     tfds_data_dir=dcfg.get("tfds_data_dir"))
  if dcfg.get("train_subset") is not None and int(dcfg.train_subset) < len(ds.labels):
    ds = data_lib.subset(ds, int(dcfg.train_subset), seed=config.seed)
  return data_lib.train_val_split(ds, fraction=float(dcfg.get("train_fraction", 0.5)),
                                  seed=config.seed)


def _epoch_means(metrics: list[dict]) -> dict[str, float]:
  m = jax.device_get(metrics)
  out = {}
  for part in ("train", "val"):
    count = sum(int(x[f"{part}_aux"]["count"]) for x in m)
    out[f"{part}_loss"] = float(sum(float(x[f"{part}_loss"]) * int(x[f"{part}_aux"]["count"])
                                    for x in m) / count)
    out[f"{part}_accuracy"] = float(sum(int(x[f"{part}_aux"]["correct"]) for x in m) / count)
  if "coupling" in m[-1]:
    out["coupling"] = float(m[-1]["coupling"])
  return out


class Search:
  """One search in progress: network, state, compiled step, batches, logits history.

  ``run_search`` drives one; ``scripts/bench_search.py`` interleaves the
  epochs of several in one process, sharing the data halves and (with
  ``config.compile = "pass"``) the compiled gradient pass through ``pass_cache``.

  Args:
    config: a search config (``configs/darts_cifar10.py``); validated here.
    workdir: where ``metrics.jsonl`` and the final files go.
    halves: ``(train_part, val_part)`` from :func:`load_halves`; loaded when ``None``.
    pass_cache: a dict shared between searches whose networks and batches have
      the same shapes (``"pass"`` mode); ``None`` compiles privately.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               halves: tuple[data_lib.Dataset, data_lib.Dataset] | None = None,
               pass_cache: dict | None = None):
    validate_config(config)
    self.t_start = time.time()
    self.config = config
    self.label = method_label(config)
    self.workdir = os.path.abspath(os.path.expanduser(str(workdir)))
    os.makedirs(self.workdir, exist_ok=True)
    self.train_part, self.val_part = load_halves(config) if halves is None else halves
    train_part, val_part = self.train_part, self.val_part
    batch_size = int(config.batch_size)
    spe = min(data_lib.steps_per_epoch(train_part, batch_size),
              data_lib.steps_per_epoch(val_part, batch_size))
    if config.get("max_steps_per_epoch"):
      spe = min(spe, int(config.max_steps_per_epoch))
    self.steps_per_epoch = spe
    self.num_epochs = int(config.num_epochs)
    self.mode = config.get("compile", "step")

    m = config.model
    net = SearchNetwork(num_cells=m.num_cells, channels=m.channels, steps=m.steps,
                        multiplier=m.multiplier, stem_multiplier=m.stem_multiplier,
                        primitives=tuple(m.primitives), num_classes=train_part.num_classes,
                        in_channels=train_part.image_shape[-1], rngs=nnx.Rngs(config.seed))
    self.primitives = net.primitives
    graphdef, weights, rest = nnx.split(net, nnx.Param, ...)
    weights, rest = nnx.as_pure(weights), nnx.as_pure(rest)
    self.search_params = int(sum(np.size(x) for x in jax.tree.leaves(weights)))
    alphas = net.init_alphas(jax.random.key(config.seed + 1),
                             scale=float(config.search.get("alpha_init_scale", 1e-3)))
    loss_fn = make_loss_fn(graphdef, rest)

    augment = bool(config.data.get("augment", False))
    self.train_it = data_lib.train_batches(train_part, batch_size=batch_size, seed=config.seed,
                                           augment=augment)
    self.val_it = data_lib.train_batches(val_part, batch_size=batch_size, seed=config.seed + 1,
                                         augment=augment)
    self.first = (next(self.train_it), next(self.val_it))

    grads_fn = self.meter = None
    t0 = time.time()
    if self.mode == "pass":
      flat, unravel = ravel_pytree(weights)
      key = json.dumps([m.to_dict(), config.seed, train_part.num_classes, train_part.image_shape,
                        batch_size], default=str, sort_keys=True)
      cache = {} if pass_cache is None else pass_cache
      if key not in cache:
        tree_loss = loss_fn
        flat_loss = lambda w, a, b: tree_loss(unravel(w), a, b)  # noqa: E731
        cache[key] = (flat_loss, jax.jit(algorithms.loss_and_grads(flat_loss)).lower(
            flat, alphas, self.first[0]).compile())
      loss_fn, compiled_pass = cache[key]
      weights = flat
      self.meter = grads_fn = _MeteredPass(compiled_pass)

    total_steps = spe * self.num_epochs
    w_tx, self.schedule = make_weights_tx(config.optimizer, total_steps)
    a_tx = make_alphas_tx(config.arch_optimizer)
    s = config.search
    if s.method == "rarts":
      vcfg = val_optimizer_config(config)
      y_tx = w_tx if vcfg is None else make_weights_tx(vcfg, total_steps)[0]
      self.state = algorithms.init_rarts(weights, alphas, w_tx, a_tx, y_tx)
      step = algorithms.rarts_step(
          loss_fn, w_tx, a_tx, lam=float(s.lam), beta=float(s.beta), val_weights_tx=y_tx,
          alpha_update=s.get("alpha_update", "gauss_seidel"), grads_fn=grads_fn)
    else:
      self.state = algorithms.init_darts(weights, alphas, w_tx, a_tx)
      xi = self.schedule if s.get("xi") is None else float(s.xi)
      step = algorithms.darts_step(loss_fn, w_tx, a_tx, order=int(s.order), xi=xi,
                                   hessian=s.hessian, fd_epsilon=float(s.get("fd_epsilon", 0.01)),
                                   grads_fn=grads_fn)
    self.state_bytes = _tree_bytes(self.state)
    if self.mode == "step":
      donate = () if jax.default_backend() == "cpu" else (0,)  # the CPU ignores donation
      self.step_fn = jax.jit(step, donate_argnums=donate).lower(self.state, *self.first).compile()
      a = _analysis(self.step_fn)
      self.step_peak_bytes = None if a is None else (
          a["argument"] + a["output"] + a["temp"] - a["alias"] - _tree_bytes(self.first))
    else:
      self.step_fn = step
      self.step_peak_bytes = None
    self.compile_seconds = time.time() - t0

    self.history = {c: [np.asarray(alphas[c])] for c in CELL_TYPES}
    self.metrics_path = os.path.join(self.workdir, "metrics.jsonl")
    open(self.metrics_path, "w").close()
    self.epoch = 0
    self.epoch_seconds: list[float] = []
    self.step_seconds: list[float] = []
    self.record: dict = {}

  def describe(self) -> str:
    return (f"search {self.label} on {self.config.dataset} ({len(self.train_part)} train / "
            f"{len(self.val_part)} val from {self.train_part.source}), {self.steps_per_epoch} "
            f"steps per epoch, compiled ({self.mode}) in {self.compile_seconds:.1f}s")

  def run_epoch(self) -> dict:
    """Runs one epoch, appends its record to ``metrics.jsonl`` and returns it."""
    self.epoch += 1
    step_metrics, seconds = [], 0.0
    for k in range(self.steps_per_epoch):
      if self.epoch == 1 and k == 0:
        batches = self.first
      else:
        batches = (next(self.train_it), next(self.val_it))
      if self.meter is not None:
        self.meter.start_step()
      t0 = time.time()
      self.state, m = self.step_fn(self.state, *batches)
      jax.block_until_ready(self.state)
      dt = time.time() - t0
      seconds += dt
      self.step_seconds.append(dt)
      step_metrics.append(m)
    self.epoch_seconds.append(seconds)
    alphas = jax.device_get(self.state.alphas)
    means = _epoch_means(step_metrics)
    bad = sorted(k for k, v in means.items() if not np.all(np.isfinite(v)))
    bad += [f"alphas[{c!r}]" for c in CELL_TYPES if not np.all(np.isfinite(alphas[c]))]
    if bad:
      raise FloatingPointError(f"the search diverged in epoch {self.epoch}: {', '.join(bad)} "
                               f"not finite (no genotype is derived from it); lower the learning "
                               f"rates or check the data")
    for c in CELL_TYPES:
      self.history[c].append(np.asarray(alphas[c]))
    genotype = derive_genotype(alphas, self.primitives,
                               multiplier=int(self.config.model.multiplier))
    peak, source = _peak_memory()
    spe = self.steps_per_epoch
    self.record = {"epoch": self.epoch, "step": self.epoch * spe, **means,
                   "epoch_seconds": seconds, "lr": float(self.schedule(self.epoch * spe - 1)),
                   "peak_memory_bytes": peak, "memory_source": source,
                   "genotype": genotype_str(genotype)}
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps(self.record) + "\n")
    return self.record

  @property
  def seconds_per_epoch(self) -> float:
    """``steps_per_epoch`` times the median step time, without the first step."""
    times = self.step_seconds[1:] or self.step_seconds
    return float(self.steps_per_epoch * np.median(times)) if times else float("nan")

  def finish(self) -> dict:
    """Writes ``genotype.json``, ``alphas.npz``, ``alphas.png``, ``report.json``; returns the report."""
    config, workdir = self.config, self.workdir
    alphas = jax.device_get(self.state.alphas)
    genotype = derive_genotype(alphas, self.primitives, multiplier=int(config.model.multiplier))
    save_genotype(genotype, os.path.join(workdir, "genotype.json"))
    stacked = {c: np.stack(self.history[c]) for c in CELL_TYPES}
    np.savez(os.path.join(workdir, "alphas.npz"), **stacked,
             epochs=np.arange(len(self.history["normal"])), primitives=np.array(self.primitives))
    plot_alphas(stacked, self.primitives, int(config.model.steps),
                os.path.join(workdir, "alphas.png"))
    if self.meter is not None:
      self.step_peak_bytes = self.state_bytes + self.meter.peak
    peak, source = _peak_memory()
    s = config.search
    report = {
        "method": s.method,
        "label": self.label,
        "order": int(s.order) if s.method == "darts" else None,
        "hessian": s.hessian if s.method == "darts" and s.order == 2 else None,
        "lam": float(s.lam) if s.method == "rarts" else None,
        "beta": float(s.beta) if s.method == "rarts" else None,
        "alpha_update": s.get("alpha_update", "gauss_seidel") if s.method == "rarts" else None,
        "genotype": genotype._asdict(),
        "genotype_str": genotype_str(genotype),
        "epochs": self.epoch,
        "steps_per_epoch": self.steps_per_epoch,
        "seconds_per_epoch": self.seconds_per_epoch,
        "epoch_seconds": self.epoch_seconds,
        "compile": self.mode,
        "compile_seconds": self.compile_seconds,
        "passes_per_step": (self.meter.calls / len(self.step_seconds)
                            if self.meter is not None and self.step_seconds else None),
        "step_peak_bytes": self.step_peak_bytes,
        "state_bytes": self.state_bytes,
        "peak_memory_bytes": peak,
        "memory_source": source,
        "search_params": self.search_params,
        "final": {k: self.record.get(k) for k in ("train_loss", "train_accuracy", "val_loss",
                                                  "val_accuracy")},
        "dataset": config.dataset,
        "dataset_source": self.train_part.source,
        "train_examples": len(self.train_part),
        "val_examples": len(self.val_part),
        "wall_seconds": time.time() - self.t_start,
        "config": config.to_dict(),
    }
    vcfg = val_optimizer_config(config)
    if vcfg is not None:  # config.val_optimizer's None fields follow config.optimizer
      report["val_optimizer"] = vcfg.to_dict()
    with open(os.path.join(workdir, "report.json"), "w") as f:
      json.dump(report, f, indent=1, default=str)
    return report


def run_search(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the search ``config`` describes and writes the workdir files (module docstring).

  Returns:
    The report (also written to ``workdir/report.json``).
  """
  validate_config(config)
  search = Search(config, workdir)
  print(search.describe(), flush=True)
  for _ in range(search.num_epochs):
    r = search.run_epoch()
    print(f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.4f}  "
          f"val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f}  "
          f"({r['epoch_seconds']:.1f}s)", flush=True)
  return search.finish()
