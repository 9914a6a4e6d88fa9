"""Orbax checkpoints that are never half-written and never silently wrong.

Orbax writes each step into a temporary directory and renames it when the
write has finished, so a crash mid-save leaves the previous checkpoints
intact. On top of that every checkpoint carries a SHA-256 digest of its
arrays; :meth:`CheckpointManager.restore_latest` verifies it and falls back
to the previous step (with a warning) when the newest one is unreadable or
does not match, and raises a clear error when none is usable. The unusable
newer checkpoints are moved aside (renamed ``<step>.unusable``), so that the
resumed run saves those steps again instead of leaving the bad copies as the
newest.
"""

from __future__ import annotations

import hashlib
import logging as py_logging
import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from sparsejax import tree as tree_lib

__all__ = ["CheckpointManager", "CheckpointError", "tree_digest"]

# Orbax logs every save at INFO through absl; keep the console readable.
py_logging.getLogger("absl").setLevel(py_logging.WARNING)


class CheckpointError(RuntimeError):
  """No checkpoint in the directory could be restored."""


def tree_digest(tree) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes."""
  h = hashlib.sha256()
  for path, leaf in tree_lib.leaves_with_paths(jax.device_get(tree)):
    kind = ""
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
      kind = f"key<{jax.random.key_impl(leaf)}>"  # typed PRNG keys: digest their data
      leaf = jax.random.key_data(leaf)
    a = np.asarray(leaf)
    h.update(f"{path}|{kind}{a.dtype}|{a.shape}|".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _abstract(tree):
  def leaf(x):
    sharding = getattr(x, "sharding", None)
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype  # Python scalars too
    return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)


class CheckpointManager:
  """Saves and restores a pytree (e.g. a ``TrainState``) by step.

  Args:
    directory: where step folders go (created if missing).
    keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str, *, keep: int = 3):
    if not isinstance(keep, int) or keep < 1:
      raise ValueError(f"keep must be a positive int, got {keep!r}")
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree, *, extra: dict | None = None) -> None:
    """Saves ``tree`` at ``step`` (asynchronously; see :meth:`wait`).

    ``extra``: JSON-serialisable values stored beside the arrays (returned by
    ``restore(..., return_extra=True)``). A step already saved is not saved
    again.
    """
    if step in self._manager.all_steps():
      return
    meta = {"step": int(step), "sha256": tree_digest(tree)}
    if extra is not None:
      meta["extra"] = extra
    self._manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore(self, step: int, target, *, return_extra: bool = False) -> Any:
    """Restores ``step`` into the structure of ``target``; verifies the digest.

    With ``return_extra``, returns ``(state, extra)`` with the ``extra`` dict
    given to :meth:`save` (``{}`` if none).
    """
    restored = self._manager.restore(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target)),
                                meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], restored["meta"]
    digest = tree_digest(state)
    if meta is None or meta.get("sha256") != digest:
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} does not match its recorded "
          f"SHA-256 digest (corrupted or partially overwritten)")
    if return_extra:
      return state, dict(meta.get("extra") or {})
    return state

  def restore_latest(self, target, *, return_extra: bool = False) -> Any | None:
    """Restores the newest usable checkpoint, or returns None if there is none.

    A newest checkpoint that cannot be read or fails its digest is skipped
    with a warning naming it and, once an older one has been restored, moved
    aside to ``<step>.unusable`` (so the run saves that step afresh); if every
    checkpoint fails, raises :class:`CheckpointError` listing each step and
    why, and moves nothing. ``return_extra``: as in :meth:`restore`.
    """
    self.wait()
    steps = self.all_steps()
    if not steps:
      return None
    failures = []
    for step in reversed(steps):
      try:
        restored = self.restore(step, target, return_extra=return_extra)
      except Exception as e:  # pylint: disable=broad-except
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        logging.warning("checkpoint step %d in %s is unusable (%s); trying an older one",
                        step, self.directory, reason)
        failures.append((step, reason))
        continue
      if failures:
        self._move_aside([s for s, _ in failures])
        logging.warning("resumed from step %d after skipping %d unusable checkpoint(s), "
                        "moved aside to <step>.unusable", step, len(failures))
      return restored
    raise CheckpointError(
        f"none of the {len(steps)} checkpoint(s) in {self.directory} could be restored:\n  "
        + "\n  ".join(f"step {s}: {r}" for s, r in failures)
        + "\nMove the directory away to start fresh, or point --workdir elsewhere.")

  def _move_aside(self, steps) -> None:
    """Renames the given steps' folders to ``<step>.unusable`` (``.1``, ... if taken)."""
    if jax.process_index() == 0:
      for step in steps:
        src = os.path.join(self.directory, str(int(step)))
        if not os.path.isdir(src):
          continue
        dst, n = src + ".unusable", 0
        while os.path.exists(dst):
          n += 1
          dst = f"{src}.unusable.{n}"
        os.rename(src, dst)
    if jax.process_count() > 1:  # every process sees the renames before reloading
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("sparsejax_checkpoint_move_aside")
    self._manager.reload()
