r"""Evaluates a saved (compacted) model: loaded from its files and model name alone.

  python scripts/eval.py --model_dir runs/slim/compacted --dataset cifar10
  python scripts/eval.py --model_dir runs/slim/compacted --dataset cifar10 \
      --data_dir ../shared/data --batch_size 500 --name vgg19

``--model_dir`` is a directory written by ``sparsejax.compact.save`` (for
example ``<workdir>/compacted`` of a run with ``config.compact = True``): the
model is rebuilt from ``model.json`` (name and constructor config) and its
orbax state. Prints one JSON line: accuracy, loss, parameters and per-example
multiply-adds of the loaded model, and evaluation time.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402


def evaluate_arrays(model, images: np.ndarray, labels: np.ndarray, *,
                    batch_size: int = 500) -> dict:
  """Accuracy and mean cross-entropy of ``model`` (eval mode) on arrays."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  model = nnx.clone(model)
  model.eval()
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, x, y):
    logits = nnx.merge(graphdef, state)(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return loss, jnp.sum(jnp.argmax(logits, -1) == y)

  loss = correct = 0.0
  n = len(labels)
  for i in range(0, n, batch_size):
    l, c = step(state, jnp.asarray(images[i:i + batch_size]), jnp.asarray(labels[i:i + batch_size]))
    loss += float(l)
    correct += float(c)
  return {"accuracy": correct / n, "loss": loss / n, "examples": n}


def main(argv=None) -> dict:
  from absl import app, flags  # pylint: disable=import-outside-toplevel

  app.define_help_flags()  # --help / --helpfull, which the error below points to

  flags.DEFINE_string("model_dir", None, "Directory written by sparsejax.compact.save.")
  flags.DEFINE_string("dataset", None, "Dataset name (mnist, fashion_mnist, cifar10, ...).")
  flags.DEFINE_string("split", "test", "Split to evaluate.")
  flags.DEFINE_string("data_dir", None, "Directory of .npz datasets ($SPARSEJAX_DATA_DIR).")
  flags.DEFINE_string("name", None, "Override the saved model name.")
  flags.DEFINE_integer("batch_size", 500, "Evaluation batch size.")
  flags.mark_flags_as_required(["model_dir", "dataset"])
  rest = flags.FLAGS(argv if argv is not None else sys.argv)
  if len(rest) > 1:
    raise SystemExit(f"scripts/eval.py: unexpected positional arguments {rest[1:]} (every "
                     f"option is a --flag; see --help)")
  f = flags.FLAGS

  from sparsejax import compact  # pylint: disable=import-outside-toplevel
  from sparsejax import data as data_lib  # pylint: disable=import-outside-toplevel

  model = compact.load(f.model_dir, name=f.name)
  ds = data_lib.load(f.dataset, f.split, data_dir=f.data_dir)
  images = data_lib.normalize(ds.images, ds.mean, ds.std)
  t = time.time()
  res = evaluate_arrays(model, images, np.asarray(ds.labels), batch_size=f.batch_size)
  res["eval_seconds"] = time.time() - t
  counted = compact.count(model, jnp.asarray(images[:1]))
  meta = compact.read_metadata(f.model_dir)
  res.update(model=f.name or meta.get("name"), config=meta.get("config"), params=counted.params,
             flops=counted.flops, dataset=f.dataset, split=f.split, source=ds.source)
  print(json.dumps(res))
  return res


if __name__ == "__main__":
  main()
