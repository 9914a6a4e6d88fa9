"""Deterministic, resumable grain input pipelines over an in-memory Dataset.

Training order. With ``S = len(ds) // batch_size`` steps per epoch, global step
``i`` lies in epoch ``e = i // S`` at position ``j = i % S``. Epoch ``e`` visits
the permutation ``np.random.default_rng([seed, 0, e]).permutation(len(ds))``
and step ``i`` takes its slice ``[j * B, (j + 1) * B)``; the last
``len(ds) % B`` examples of each epoch's permutation are dropped. The
augmentation of step ``i`` draws from ``np.random.default_rng([seed, 1, i])``.
So the batch at step ``i`` is a pure function of ``(ds, batch_size, seed,
augment, i)`` and a run resumed with ``start_step=i`` sees exactly the batches
an uninterrupted run would.

Batches are built whole (one fancy-index gather, one vectorised crop/flip and
one normalisation per batch), mapped over ``grain.MapDataset.range`` of step
numbers and read through ``to_iter_dataset`` with a small background prefetch.
The returned grain iterator also supports ``get_state()``/``set_state()``.

Normalisation: ``(x / 255 - mean) / std`` per channel with the dataset's
statistics (:func:`sparsejax.data.info`). CIFAR augmentation (``augment=True``):
zero-pad 4 pixels on each side in raw pixel space (black, as torchvision's
``RandomCrop(32, padding=4)``), take a uniformly random 32x32 crop (81 offsets)
and flip it horizontally with probability 1/2; normalisation comes after, so
padded pixels become ``-mean / std``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from sparsejax.data.datasets import Dataset

__all__ = [
    "AUGMENTABLE",
    "PAD",
    "steps_per_epoch",
    "normalize",
    "augment_batch",
    "train_batches",
    "eval_batches",
]

AUGMENTABLE = ("cifar10", "cifar100")
PAD = 4

Batch = dict[str, np.ndarray]


def _check_int(value: Any, name: str, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {name}={value}.")
  return int(value)


def steps_per_epoch(ds: Dataset, batch_size: int) -> int:
  """Number of full batches per epoch (the remainder is dropped).

  Args:
    ds: the dataset.
    batch_size: examples per batch, in ``[1, len(ds)]``.

  Returns:
    ``len(ds) // batch_size``.
  """
  batch_size = _check_int(batch_size, "batch_size", 1)
  if batch_size > len(ds):
    raise ValueError(
        f"batch_size={batch_size} exceeds the {len(ds)} examples of "
        f"{ds.name}/{ds.split}; no full batch fits."
    )
  return len(ds) // batch_size


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """Maps uint8 images to float32 ``(x / 255 - mean) / std`` per channel.

  Args:
    images: uint8 array ``(..., C)``.
    mean: per-channel means of pixels scaled to [0, 1], length ``C``.
    std: per-channel standard deviations, length ``C``.

  Returns:
    float32 array of the same shape.
  """
  images = np.asarray(images)
  if images.ndim < 1 or images.dtype != np.uint8:
    raise TypeError(
        "images must be a uint8 array with a trailing channel axis, got "
        f"dtype {images.dtype} and shape {images.shape}."
    )
  c = images.shape[-1]
  mean = np.asarray(mean, np.float64).reshape(-1)
  std = np.asarray(std, np.float64).reshape(-1)
  if mean.shape != (c,) or std.shape != (c,):
    raise ValueError(
        f"mean and std must have one entry per channel ({c}), got "
        f"{mean.size} and {std.size}."
    )
  if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
    raise ValueError(f"mean must be finite and std finite and > 0, got mean={mean.tolist()} "
                     f"and std={std.tolist()}.")
  # Broadcasting a length-C vector over a contiguous trailing (H, W, C) block
  # is several times faster than broadcasting over the channel axis alone.
  inner = images.shape[1:] if images.ndim > 1 else images.shape
  scale = np.broadcast_to((1.0 / (255.0 * std)).astype(np.float32), inner)
  offset = np.broadcast_to((-mean / std).astype(np.float32), inner)
  out = images.astype(np.float32).reshape(-1, scale.size)
  out *= scale.reshape(-1)
  out += offset.reshape(-1)
  return out.reshape(images.shape)


def augment_batch(
    images: np.ndarray, rng: np.random.Generator, pad: int = PAD
) -> np.ndarray:
  """Zero-pads, randomly crops back to size and randomly flips each image.

  Args:
    images: array ``(B, H, W, C)``.
    rng: source of the ``B`` crop offsets (uniform in ``[0, 2 * pad]`` for
      rows, then columns) and flips (probability 1/2).
    pad: padding on every side.

  Returns:
    Array of the same shape and dtype: image ``b`` is
    ``padded[b, oy:oy + H, ox:ox + W]``, mirrored left-right if flipped.
  """
  if isinstance(pad, (bool, np.bool_)) or not isinstance(pad, (int, np.integer)) or pad < 0:
    raise ValueError(f"pad must be an int >= 0, got pad={pad!r}.")
  b, h, w, c = images.shape
  padded = np.zeros((b, h + 2 * pad, w + 2 * pad, c), images.dtype)
  padded[:, pad:pad + h, pad:pad + w] = images
  oy = rng.integers(0, 2 * pad + 1, size=b)
  ox = rng.integers(0, 2 * pad + 1, size=b)
  flip = rng.integers(0, 2, size=b).astype(bool)
  out = np.empty_like(images)
  # One slice copy per image is ~4x faster than a single 4-D fancy-index
  # gather here (0.6 ms vs 2 ms for 128 CIFAR images).
  for i in range(b):
    window = padded[i, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
    out[i] = window[:, ::-1] if flip[i] else window
  return out


class _TrainBatch:
  """Step number -> training batch (see the module docstring)."""

  def __init__(self, ds: Dataset, batch_size: int, seed: int, augment: bool):
    self._images = ds.images
    self._labels = ds.labels
    self._mean = ds.mean
    self._std = ds.std
    self._n = len(ds)
    self._batch_size = batch_size
    self._steps_per_epoch = self._n // batch_size
    self._seed = seed
    self._augment = augment
    self._lock = threading.Lock()
    self._perms: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get(epoch)
      if perm is None:
        perm = np.random.default_rng([self._seed, 0, epoch]).permutation(
            self._n
        )
        if len(self._perms) >= 2:
          self._perms.pop(min(self._perms))
        self._perms[epoch] = perm
      return perm

  def indices(self, step: int) -> np.ndarray:
    epoch, j = divmod(step, self._steps_per_epoch)
    perm = self._permutation(epoch)
    return perm[j * self._batch_size:(j + 1) * self._batch_size]

  def __call__(self, step: int) -> Batch:
    idx = self.indices(step)
    images = self._images[idx]
    if self._augment:
      rng = np.random.default_rng([self._seed, 1, step])
      images = augment_batch(images, rng)
    return {
        "image": normalize(images, self._mean, self._std),
        "label": self._labels[idx],
    }


def _read_options(prefetch: int) -> grain.ReadOptions:
  prefetch = _check_int(prefetch, "prefetch", 0)
  return grain.ReadOptions(
      num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch
  )


def train_batches(
    ds: Dataset,
    *,
    batch_size: int,
    seed: int,
    augment: bool = False,
    start_step: int = 0,
    num_epochs: int | None = None,
    prefetch: int = 2,
) -> Iterator[Batch]:
  """Iterates over deterministic shuffled training batches from ``start_step``.

  Args:
    ds: the training dataset.
    batch_size: examples per batch, in ``[1, len(ds)]``.
    seed: non-negative seed of the epoch permutations and augmentation.
    augment: apply pad-4 random crop and random horizontal flip; only for
      :data:`AUGMENTABLE` datasets.
    start_step: global step of the first batch (to resume a run).
    num_epochs: stop after this many epochs (counted from step 0); ``None``
      iterates forever.
    prefetch: batches computed ahead in a background thread (0: none).

  Returns:
    A grain iterator of ``{"image": float32 (B, H, W, C), "label": int32
    (B,)}``; batch ``k`` of it is global step ``start_step + k``.
  """
  spe = steps_per_epoch(ds, batch_size)
  seed = _check_int(seed, "seed", 0)
  start_step = _check_int(start_step, "start_step", 0)
  if augment and ds.name not in AUGMENTABLE:
    raise ValueError(
        f"augment=True is only defined for {list(AUGMENTABLE)}, got dataset "
        f"{ds.name!r}."
    )
  if num_epochs is None:
    stop = sys.maxsize
  else:
    num_epochs = _check_int(num_epochs, "num_epochs", 1)
    stop = num_epochs * spe
    if start_step > stop:
      raise ValueError(
          f"start_step={start_step} is past the end of num_epochs={num_epochs} "
          f"x {spe} steps = {stop}."
      )
  make = _TrainBatch(ds, int(batch_size), seed, bool(augment))
  steps = grain.MapDataset.range(start_step, stop)
  return iter(steps.map(make).to_iter_dataset(_read_options(prefetch)))


def eval_batches(
    ds: Dataset, *, batch_size: int, prefetch: int = 2
) -> Iterator[Batch]:
  """Iterates over the whole dataset in order, without augmentation.

  Args:
    ds: the dataset.
    batch_size: examples per batch (>= 1); the last batch holds the remaining
      ``len(ds) % batch_size`` examples when that is not 0.
    prefetch: batches computed ahead in a background thread (0: none).

  Returns:
    A grain iterator of ``{"image": float32 (b, H, W, C), "label": int32
    (b,)}``, ``b <= batch_size``.
  """
  batch_size = _check_int(batch_size, "batch_size", 1)
  n = len(ds)
  images, labels, mean, std = ds.images, ds.labels, ds.mean, ds.std

  def make(k: int) -> Batch:
    sl = slice(k * batch_size, min((k + 1) * batch_size, n))
    return {
        "image": normalize(images[sl], mean, std),
        "label": np.array(labels[sl]),
    }

  num_batches = -(-n // batch_size)
  steps = grain.MapDataset.range(num_batches)
  return iter(steps.map(make).to_iter_dataset(_read_options(prefetch)))
