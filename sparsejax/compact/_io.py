"""Saving a (compacted) model with orbax and loading it from the files and its name.

A saved model is a directory holding ``model.json`` (the model's name, class,
constructor config and leaf shapes) and ``state/`` (an orbax checkpoint of
every Variable, verified by SHA-256 on restore; see
:mod:`sparsejax.checkpoint`). Loading builds the model abstractly from the
config -- by name through :func:`sparsejax.models.get_model` for shipped
models, else by importing its class -- and restores the arrays into it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsejax import checkpoint as ckpt_lib
from sparsejax import models as models_lib
from sparsejax import tree as tree_lib
from sparsejax.compact import _rebuild

__all__ = ["save", "load", "read_metadata", "METADATA_FILE"]

METADATA_FILE = "model.json"
_FORMAT = "sparsejax.compact.saved_model/1"


def _is_key(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _jsonable(x):
  try:
    json.dumps(x)
    return True
  except (TypeError, ValueError):
    return False


def save(directory: str, model, *, name: str | None = None, sample_input=None,
         extra: dict | None = None, overwrite: bool = False) -> str:
  """Saves ``model`` (any NNX module, compacted or not) to ``directory``.

  Args:
    directory: where ``model.json`` and ``state/`` go (created).
    model: the module to save.
    name: its name in :data:`sparsejax.models.MODELS` (e.g. ``"vgg19"``), so
      that :func:`load` can rebuild it from the name alone; ``None`` for other
      modules (then their class is imported at load time).
    sample_input: optional example input; its per-example shape and dtype are
      recorded (``scripts/eval.py`` uses them to count FLOPs).
    extra: optional JSON-serialisable dict stored under ``"extra"``.
    overwrite: replace an existing saved model in ``directory``.

  Returns:
    The absolute path of ``directory``.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
  if name is not None and name not in models_lib.MODELS:
    raise ValueError(f"name must be one of {models_lib.MODELS} or None, got {name!r}")
  directory = os.path.abspath(os.path.expanduser(str(directory)))
  meta_path = os.path.join(directory, METADATA_FILE)
  if os.path.exists(meta_path) or os.path.exists(os.path.join(directory, "state")):
    if not overwrite:
      raise FileExistsError(
          f"{directory} already holds a saved model; pass overwrite=True to replace it")
    # model.json is the commit marker: it goes first and comes back last, so an
    # interrupted save leaves no metadata, never old metadata over a new state.
    if os.path.exists(meta_path):
      os.remove(meta_path)
    shutil.rmtree(os.path.join(directory, "state"), ignore_errors=True)
  os.makedirs(directory, exist_ok=True)
  shapes = _rebuild.state_shapes(model)
  cfg = getattr(model, "config", None)
  method = "state"
  if isinstance(cfg, dict) and _jsonable(cfg):
    built = _rebuild._abstract_shapes(type(model), cfg)  # pylint: disable=protected-access
    if built == shapes:
      method = "config"
  elif cfg is not None:
    cfg = None
  cls = type(model)
  meta: dict[str, Any] = {
      "format": _FORMAT,
      "name": name,
      "class": f"{cls.__module__}:{cls.__qualname__}",
      "config": cfg,
      "build": method,
      "shapes": {p: list(s) for p, s in shapes.items()},
  }
  if sample_input is not None:
    x = sample_input[0] if isinstance(sample_input, (tuple, list)) else sample_input
    meta["input_shape"] = [int(s) for s in np.shape(x)[1:]]
    meta["input_dtype"] = str(np.dtype(x.dtype))
  if extra:
    if not _jsonable(extra):
      raise TypeError("extra must be JSON-serialisable")
    meta["extra"] = extra
  # PRNG keys (e.g. inside nnx.Dropout) are stored as their raw key data.
  state = nnx.state(model)
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  keys = {tree_lib.path_str(p): str(jax.random.key_impl(x)) for p, x in flat if _is_key(x)}
  if keys:
    meta["prng_keys"] = keys
  leaves = [jax.random.key_data(x) if _is_key(x) else x for _, x in flat]
  meta["dtypes"] = {tree_lib.path_str(p): str(np.dtype(x.dtype))
                    for (p, _), x in zip(flat, leaves)}
  pure = nnx.to_pure_dict(jax.tree_util.tree_unflatten(treedef, leaves))
  manager = ckpt_lib.CheckpointManager(os.path.join(directory, "state"), keep=1)
  manager.save(0, pure)
  manager.wait()
  with open(meta_path + ".tmp", "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(meta_path + ".tmp", meta_path)
  return directory


def read_metadata(directory: str) -> dict[str, Any]:
  """The ``model.json`` of a saved model."""
  path = os.path.join(os.path.abspath(os.path.expanduser(str(directory))), METADATA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {directory!r} is not a model saved by sparsejax.compact.save")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != _FORMAT:
    raise ValueError(f"{path} has format {meta.get('format')!r}, expected {_FORMAT!r}")
  return meta


def _import_class(spec: str):
  module, _, qualname = spec.partition(":")
  obj = importlib.import_module(module)
  for part in qualname.split("."):
    obj = getattr(obj, part)
  return obj


def load(directory: str, *, name: str | None = None, template=None) -> nnx.Module:
  """Loads a model saved by :func:`save`, in eval mode.

  Args:
    directory: the directory given to :func:`save`.
    name: overrides the saved model name (one of :data:`sparsejax.models.MODELS`).
    template: a module of the saved model's architecture (any widths), needed
      only for modules saved without a usable ``.config``; its arrays are
      replaced by the saved ones.

  Returns:
    The model with the saved arrays, switched to eval mode.
  """
  meta = read_metadata(directory)
  name = name if name is not None else meta.get("name")
  shapes = {p: tuple(s) for p, s in meta["shapes"].items()}
  cfg = meta.get("config")
  if template is not None:
    if not isinstance(template, nnx.Module):
      raise TypeError(f"template must be a flax.nnx.Module, got {type(template).__name__}")
    model = nnx.clone(template)
  elif cfg is None:
    raise ValueError(
        f"the model in {directory} was saved without a constructor config; pass "
        f"template= (a module of the same architecture) to load it")
  elif name is not None:
    if name not in models_lib.MODELS:
      raise ValueError(f"name must be one of {models_lib.MODELS}, got {name!r}")
    model = nnx.eval_shape(lambda: models_lib.get_model(name, rngs=nnx.Rngs(0), **cfg))
  else:
    cls = _import_class(meta["class"])
    model = nnx.eval_shape(lambda: cls(**cfg, rngs=nnx.Rngs(0)))
  built = _rebuild.state_shapes(model)
  if built.keys() != shapes.keys():
    missing = sorted(set(shapes) - set(built))[:5]
    unexpected = sorted(set(built) - set(shapes))[:5]
    raise ValueError(
        f"the model built for {directory} does not match the saved state: missing "
        f"{missing}, unexpected {unexpected}")
  # Restore into the saved shapes (they differ from the built ones for
  # state-built models and templates).
  state = nnx.state(model)
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  keys = meta.get("prng_keys", {})
  target_leaves = []
  for p, x in flat:
    path = tree_lib.path_str(p)
    if path in keys:
      data = jax.eval_shape(lambda: jax.random.key_data(
          jax.random.key(0, impl=keys[path])))
      target_leaves.append(jax.ShapeDtypeStruct(shapes[path] + data.shape, data.dtype))
    else:  # the saved dtype (older saves: the built model's)
      dtype = jnp.dtype(meta["dtypes"][path]) if path in meta.get("dtypes", {}) else x.dtype
      target_leaves.append(jax.ShapeDtypeStruct(shapes[path], dtype))
  target_state = jax.tree_util.tree_unflatten(treedef, target_leaves)
  target = nnx.to_pure_dict(target_state)
  manager = ckpt_lib.CheckpointManager(os.path.join(os.path.abspath(directory), "state"), keep=1)
  restored = manager.restore_latest(target)
  if restored is None:
    raise ckpt_lib.CheckpointError(f"no saved state in {os.path.join(directory, 'state')}")
  values = {tree_lib.path_str(p): x
            for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}
  for path, impl in keys.items():
    values[path] = jax.random.wrap_key_data(values[path], impl=impl)
  _rebuild.set_state(model, values, cast=False)  # the saved dtypes
  if built != shapes:
    _rebuild._fix_flax_widths(model)  # pylint: disable=protected-access
  model.eval()
  return model
