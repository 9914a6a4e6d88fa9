"""The trainer: smoke run, resume == uninterrupted, checkpoint corruption, bad input."""

import glob
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from configs import default as default_config
from fake_data import write_fake_mnist
from sparsejax import checkpoint as ckpt_lib
from sparsejax import train


@pytest.fixture()
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("data")
  write_fake_mnist(str(d))
  return str(d)


def _config(data_dir, **overrides):
  c = default_config.get_config("smoke")
  c.data.dir = data_dir
  c.data.train_subset = None
  c.data.test_subset = None
  c.batch_size = 32
  c.num_epochs = 4  # 20 steps per epoch -> 80 steps
  c.algorithm.begin_epoch = 0.5
  c.algorithm.end_epoch = 2.0
  c.algorithm.update_every_steps = 5
  c.checkpoint.every_steps = 10
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def test_smoke_run_prunes_learns_and_reports(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  report = train.train_and_evaluate(_config(data_dir), workdir)
  # The synthetic task is easy: a working trainer gets it nearly all right.
  assert report["test_accuracy"] >= 0.9
  # Global magnitude pruning to 90% over the kernels: exactly floor(0.9 n) zeros.
  n = sum(l["params"] for l in report["layers"] if l["prunable"])
  z = sum(l["zeros"] for l in report["layers"] if l["prunable"])
  assert z == int(np.floor(np.float32(0.9) * n))
  assert report["sparsity"] == pytest.approx(z / n)
  assert {l["path"] for l in report["layers"] if l["prunable"]} == {
      "conv1/kernel", "conv2/kernel", "fc1/kernel", "fc2/kernel"}
  for l in report["layers"]:
    if not l["prunable"]:
      assert l["zeros"] < l["params"]  # biases are not pruned
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["test_accuracy"] == report["test_accuracy"]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [20, 40, 60, 80]
  # After 20 steps the last mask update was at step 15 (updates every 5 from step 10 to 40):
  # 0.9 * (1 - (1 - 5/30)^3) of the kernels, floored to whole weights.
  s15 = 0.9 * (1 - (1 - 5 / 30) ** 3)
  assert lines[0]["sparsity"] == pytest.approx(np.floor(np.float32(s15) * n) / n, abs=0.5 / n)
  assert lines[-1]["sparsity"] == pytest.approx(z / n)
  assert os.path.getsize(os.path.join(workdir, "sparsity.png")) > 1000
  assert "fake" not in report["dataset_source"] and data_dir in report["dataset_source"]


def test_resume_equals_uninterrupted(data_dir, tmp_path):
  cfg = _config(data_dir)
  full = train.train_and_evaluate(cfg, str(tmp_path / "a"))
  interrupted = _config(data_dir, stop_after_steps=33)
  out = train.train_and_evaluate(interrupted, str(tmp_path / "b"))
  assert out == {"stopped_at_step": 33}
  resumed = train.train_and_evaluate(cfg, str(tmp_path / "b"))
  assert resumed["params_sha256"] == full["params_sha256"]
  assert resumed["test_accuracy"] == full["test_accuracy"]
  # metrics.jsonl has each epoch once, with the uninterrupted run's values: the
  # interrupted epoch's training loss and accuracy count its steps before the stop too.
  lines = [json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [20, 40, 60, 80]
  assert _without_times(lines) == _without_times(_metrics(tmp_path / "a"))
  # The time per epoch covers the epochs before the interruption too, and a
  # finished run opened again still reports it.
  expected = float(np.median([l["epoch_seconds"] for l in lines][1:]))
  assert resumed["seconds_per_epoch"] == pytest.approx(expected)
  again = train.train_and_evaluate(cfg, str(tmp_path / "b"))
  assert again["seconds_per_epoch"] == pytest.approx(expected)


def test_resumed_run_reports_its_whole_wall_time_and_reopening_changes_nothing(
    data_dir, tmp_path):
  wd = str(tmp_path / "run")
  out = train.train_and_evaluate(_config(data_dir, stop_after_steps=33), wd)
  assert out == {"stopped_at_step": 33}
  resumed = train.train_and_evaluate(_config(data_dir), wd)
  # Every epoch's time lies inside one invocation's training, so the run's wall
  # time covers their sum, the epochs before the interruption included.
  assert resumed["wall_seconds"] >= sum(l["epoch_seconds"] for l in _metrics(wd))
  with open(os.path.join(wd, "report.json")) as f:
    written = json.load(f)
  # A finished run opened again trains nothing and reports the same run.
  again = train.train_and_evaluate(_config(data_dir), wd)
  assert again == resumed
  with open(os.path.join(wd, "report.json")) as f:
    assert json.load(f) == written


def _metrics(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def _without_times(lines):
  return [{k: v for k, v in l.items() if k != "epoch_seconds"} for l in lines]


def _corrupt_step(workdir, step):
  files = [f for f in glob.glob(os.path.join(workdir, "checkpoints", str(step), "**", "*"),
                                recursive=True) if os.path.isfile(f) and os.path.getsize(f) > 64]
  assert files
  for f in files:
    if "meta" in f.split(os.sep)[-2:][0]:
      continue
    with open(f, "r+b") as fh:
      data = bytearray(fh.read())
      for i in range(len(data) // 3, len(data) // 3 + 32):
        data[i] ^= 0xFF
      fh.seek(0)
      fh.write(data)


def test_corrupted_newest_checkpoint_falls_back(data_dir, tmp_path):
  cfg = _config(data_dir)
  full = train.train_and_evaluate(cfg, str(tmp_path / "a"))
  wd = str(tmp_path / "b")
  train.train_and_evaluate(_config(data_dir, stop_after_steps=33), wd)
  steps = ckpt_lib.CheckpointManager(os.path.join(wd, "checkpoints")).all_steps()
  assert steps[-1] == 33
  _corrupt_step(wd, 33)
  resumed = train.train_and_evaluate(cfg, wd)  # from step 30, mid-epoch
  assert resumed["params_sha256"] == full["params_sha256"]
  assert _without_times(_metrics(wd)) == _without_times(_metrics(str(tmp_path / "a")))
  assert "33.unusable" in os.listdir(os.path.join(wd, "checkpoints"))


def test_corrupted_final_checkpoint_is_saved_again(data_dir, tmp_path):
  from sparsejax import pipelines  # pylint: disable=import-outside-toplevel
  cfg = _config(data_dir, num_epochs=2)
  wd = str(tmp_path / "run")
  full = train.train_and_evaluate(cfg, wd)
  _corrupt_step(wd, 40)
  # The finished run's final state is gone: loading it says so, not the step-30 state.
  with pytest.raises(ckpt_lib.CheckpointError, match="finished at step 40.*step 30"):
    pipelines.load_final_state(cfg, wd)
  # Running it again trains steps 31-40 again and saves step 40 afresh.
  again = train.train_and_evaluate(cfg, wd)
  assert again["params_sha256"] == full["params_sha256"]
  state = pipelines.load_final_state(cfg, wd)
  assert int(state.step) == 40
  assert ckpt_lib.tree_digest(state.params) == full["params_sha256"]


def test_checkpoint_past_the_configs_length_is_an_error(data_dir, tmp_path):
  wd = str(tmp_path / "run")
  short = {"algorithm.end_epoch": 0.5}  # the ramp ends within both lengths
  train.train_and_evaluate(_config(data_dir, num_epochs=1, **short), wd)
  with pytest.raises(ValueError, match=r"holds a run of a different config \(1 field\(s\) differ: "
                                       r"num_epochs: 1.0 -> 0.5\)"):
    train.train_and_evaluate(_config(data_dir, num_epochs=0.5, **short), wd)
  os.remove(os.path.join(wd, "run_config.json"))  # e.g. a run from before the record
  with pytest.raises(ValueError, match=r"checkpoint at step 20, past this config's 10 steps"):
    train.train_and_evaluate(_config(data_dir, num_epochs=0.5, **short), wd)


def test_resuming_with_a_different_config_is_an_error(data_dir, tmp_path):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(_config(data_dir, stop_after_steps=5), wd)
  with pytest.raises(ValueError, match=r"lr.base: 0.05 -> 0.02.*seed: 0 -> 3"):
    train.train_and_evaluate(_config(data_dir, seed=3, **{"lr.base": 0.02}), wd)
  # A change of the params' structure gets the same message (restoring first failed on the
  # tree and moved the checkpoints aside as unusable).
  with pytest.raises(ValueError, match=r"model.name: 'lenet5' -> 'lenet300_100'"):
    train.train_and_evaluate(_config(data_dir, **{"model.name": "lenet300_100"}), wd)
  assert ckpt_lib.CheckpointManager(os.path.join(wd, "checkpoints")).all_steps() == [5]
  # Fields that do not change the result may differ (here: checkpoint cadence, eval batch).
  cfg = _config(data_dir, num_epochs=1, eval_batch_size=7, **{"checkpoint.every_steps": 3})
  cfg.num_epochs = 4
  train.train_and_evaluate(cfg, wd)


def test_all_checkpoints_corrupted_is_a_clear_error(data_dir, tmp_path):
  wd = str(tmp_path / "b")
  train.train_and_evaluate(_config(data_dir, stop_after_steps=25), wd)
  for s in ckpt_lib.CheckpointManager(os.path.join(wd, "checkpoints")).all_steps():
    _corrupt_step(wd, s)
  with pytest.raises(ckpt_lib.CheckpointError, match="could be restored"):
    train.train_and_evaluate(_config(data_dir), wd)


@pytest.mark.parametrize("field,value,match", [
    ("model.name", "resnet7", r"config.model.name must be one of .*lenet5"),
    ("dataset", "imagenet", r"config.dataset must be one of .*mnist"),
    ("algorithm.name", "rigl", r"config.algorithm.name must be one of .*magnitude_pruning"),
    ("optimizer.name", "lamb", r"config.optimizer.name must be one of"),
    ("compact_multiple_of", 0, r"config.compact_multiple_of must be a positive int, got 0"),
    ({"num_epochs": 0.01, "algorithm.end_epoch": 0.01, "algorithm.begin_epoch": 0.0}, None,
     r"config.num_epochs=0.01 is 0 steps at 20 steps per epoch"),
    ("num_epochs", float("nan"), r"config.num_epochs must be a positive finite number, got nan"),
    ("eval_batch_size", 0, r"config.eval_batch_size must be a positive int, got 0"),
    ("stop_after_steps", 0, r"config.stop_after_steps must be a positive int or None, got 0"),
    ("data.train_subset", 0, r"config.data.train_subset must be a positive int or None, got 0"),
    ("data.test_subset", -5, r"config.data.test_subset must be a positive int or None, got -5"),
    ("lr.base", -0.05, r"config.lr.base must be > 0 \(finite, not NaN\), got -0.05"),
    ("optimizer.momentum", 1.5, r"config.optimizer.momentum must be in "
     r"\[0, 1\) \(finite, not NaN\), got 1.5"),
    ("optimizer.weight_decay", -1e-3, r"config.optimizer.weight_decay must be .* got -0.001"),
    ("lr.final_fraction", 2.0, r"config.lr.final_fraction must be in \[0, 1\]"),
    ("checkpoint.every_steps", -5, r"config.checkpoint.every_steps must be an int >= 0"),
    ("checkpoint.keep", 0, r"config.checkpoint.keep must be a positive int, got 0"),
    ("seed", -1, r"config.seed must be an int >= 0, got -1"),
    ("data.augment", True, r"config.data.augment=True is only defined for \['cifar10', "
     r"'cifar100'\] .* got config.dataset='mnist'"),
    # A shortened run that leaves the ramp's end behind never reaches the sparsity.
    ("num_epochs", 1.0, r"config.algorithm.end_epoch must lie in \[begin_epoch=0.5, "
     r"num_epochs=1\] .*never reaches sparsity=0.9\), got 2.0"),
    ("search", {"method": "rarts"}, r"architecture-search config, run it with scripts/search.py"),
])
def test_unknown_names_in_config(data_dir, tmp_path, field, value, match):
  overrides = field if isinstance(field, dict) else {field: value}
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(_config(data_dir, **overrides), str(tmp_path / "w"))


def test_step_boundary_past_the_end_is_an_error(data_dir, tmp_path):
  # e.g. the full recipe's 81/122 left in a 20-epoch run: the decay never happens.
  c = _config(data_dir, **{"lr.schedule": "step", "lr.boundaries_epochs": (2, 4)})
  with pytest.raises(ValueError, match=r"config.lr.boundaries_epochs\[1\] must be "
                                       r"in \(0, 4\) \(finite, not NaN\), got 4"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  c = _config(data_dir, **{"lr.schedule": "step", "lr.factor": 0.0})
  with pytest.raises(ValueError, match=r"config.lr.factor must be > 0 \(finite"):
    train.train_and_evaluate(c, str(tmp_path / "w"))


def test_warmup_longer_than_the_run_is_an_error(data_dir, tmp_path):
  c = _config(data_dir, **{"lr.schedule": "warmup_cosine", "lr.warmup_epochs": 4})
  with pytest.raises(ValueError, match=r"config.lr.warmup_epochs=4.0 is 80 steps, not fewer "
                                       r"than the run's 80 steps"):
    train.train_and_evaluate(c, str(tmp_path / "w"))


def test_warmup_epochs_round_to_steps_like_the_other_boundaries():
  c = default_config.get_config()
  c.lr.schedule, c.lr.base, c.lr.warmup_epochs = "warmup_cosine", 1.0, 0.29  # 28.999... steps
  lr = train.make_lr_schedule(c, 100, 1000)
  assert float(lr(28)) < 1.0 and float(lr(29)) == pytest.approx(1.0)


def test_step_schedule_boundaries_on_the_same_step_compound():
  c = default_config.get_config()
  c.lr.schedule, c.lr.base, c.lr.factor = "step", 1.0, 0.1
  c.lr.boundaries_epochs = (1.0, 1.2, 3.0)  # steps 2, 2 (2.4 rounded) and 6 at 2 per epoch
  lr = train.make_lr_schedule(c, 2, 10)
  np.testing.assert_allclose([float(lr(t)) for t in (0, 1, 2, 5, 6, 9)],
                             [1.0, 1.0, 1e-2, 1e-2, 1e-3, 1e-3], rtol=1e-6)


@pytest.mark.parametrize("end_epoch", [3.0, 2.95])
def test_pruning_ramp_ending_with_the_run_reaches_its_target(end_epoch):
  """end_epoch = num_epochs: the last mask update runs on the last step (count total - 1)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  c = default_config.get_config()
  c.algorithm.sparsity, c.algorithm.begin_epoch, c.algorithm.end_epoch = 0.9, 0.0, end_epoch
  c.algorithm.update_every_steps, c.algorithm.distribution = 10, "uniform"
  spe, total = 10, 30  # 3 epochs
  alg = train.make_algorithm(c, optax.constant_schedule(0.1), spe, total)
  tx = optax.chain(optax.sgd(0.01), *alg.after)
  params = {"dense": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(20, 50)),
                                            jnp.float32)}}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(total):
    updates, state = step(jax.tree.map(lambda a: jnp.full_like(a, 1e-3), params), state, params)
    params = optax.apply_updates(params, updates)
  assert int((params["dense"]["kernel"] == 0).sum()) == 900


def test_metrics_writer_drops_a_truncated_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  full = [{"step": 20, "epoch_seconds": 1.5}, {"step": 40, "epoch_seconds": 2.5},
          {"step": 60, "epoch_seconds": 3.5}]
  path.write_text("".join(json.dumps(r) + "\n" for r in full) + '{"step": 80, "trai')
  w = train.MetricsWriter(str(tmp_path), 40)
  assert [json.loads(l) for l in path.read_text().splitlines()] == full[:2]
  assert w.epoch_seconds == [1.5, 2.5]
  # A bad line in the middle is not a crash artifact: a clear error, file untouched.
  text = json.dumps(full[0]) + "\n{oops\n" + json.dumps(full[1]) + "\n"
  path.write_text(text)
  with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not JSON"):
    train.MetricsWriter(str(tmp_path), 40)
  assert path.read_text() == text


def test_test_subset_is_the_same_for_every_seed(data_dir):
  c0 = _config(data_dir, **{"data.train_subset": 300, "data.test_subset": 50})
  c1 = _config(data_dir, seed=1, **{"data.train_subset": 300, "data.test_subset": 50})
  t0, t1 = train.load_data(c0, "test"), train.load_data(c1, "test")
  np.testing.assert_array_equal(t0.images, t1.images)
  full = train.load_data(_config(data_dir), "test")
  assert len(t0.labels) == 50 and len(full.labels) > 50
  from sparsejax import data as data_lib  # pylint: disable=import-outside-toplevel
  np.testing.assert_array_equal(t0.images, data_lib.subset(full, 50, seed=0).images)
  # The training subset follows the seed.
  a, b = train.load_data(c0, "train"), train.load_data(c1, "train")
  assert len(a.labels) == 300 and not np.array_equal(a.images, b.images)


def test_unwritable_workdir(data_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(ValueError, match="workdir .* is not writable"):
    train.train_and_evaluate(_config(data_dir), str(blocker / "run"))


def test_default_config_variants():
  c = default_config.get_config()
  assert (c.dataset, c.model.name, c.algorithm.name, c.algorithm.sparsity) == (
      "mnist", "lenet5", "magnitude_pruning", 0.9)
  assert default_config.get_config("dense").algorithm.name == "none"
  with pytest.raises(ValueError, match="unknown variant"):
    default_config.get_config("huge")


def test_compact_flag_saves_and_reports_the_compacted_model(data_dir, tmp_path):
  from sparsejax import compact  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  report = train.train_and_evaluate(_config(data_dir, compact=True, num_epochs=2), workdir)
  entry = report["compaction"]
  # Removing dead channels must not change a single prediction.
  assert entry["test_accuracy"] == report["test_accuracy"]
  assert entry["params_before"] == sum(l["params"] for l in report["layers"])
  loaded = compact.load(os.path.join(workdir, "compacted"))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(loaded, nnx.Param))) == entry["params_after"]
  assert entry["params_after"] < entry["params_before"]  # 90% GMP leaves dead fc1 units
  # The saved model, loaded from its files alone, computes the trained model's function.
  from sparsejax import data as data_lib  # pylint: disable=import-outside-toplevel
  graphdef, params, rest = nnx.split(loaded, nnx.Param, ...)
  got = train.evaluate(train.make_eval_step(graphdef), nnx.as_pure(params), nnx.as_pure(rest),
                       data_lib.load("mnist", "test", data_dir=data_dir), 1000)
  assert got["accuracy"] == report["test_accuracy"]
  assert got["loss"] == pytest.approx(report["test_loss"], rel=1e-5)
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["compaction"]["params_after"] == entry["params_after"]


def test_time_train_steps_threads_each_variants_state():
  import optax
  from sparsejax import models
  make = lambda: models.LeNet300100(widths=(8, 4), in_features=12, rngs=nnx.Rngs(0))  # noqa: E731
  rng = np.random.default_rng(0)
  batch = {"image": jax.numpy.asarray(rng.normal(size=(5, 12)), jax.numpy.float32),
           "label": jax.numpy.asarray(rng.integers(0, 10, size=5), jax.numpy.int32)}
  variants = {"sgd": optax.sgd(0.1), "frozen": optax.sgd(0.0)}
  times, states = train.time_train_steps(variants, make, batch, repeats=3, warmup=2)
  assert list(times) == ["sgd", "frozen"] and all(len(t) == 3 for t in times.values())
  assert all(t > 0 for v in times.values() for t in v)
  # The same 5 steps taken by hand.
  state, train_def, _ = train.create_train_state(make(), variants["sgd"])
  step = train.make_train_step(train_def, variants["sgd"])
  for _ in range(5):
    state, _ = step(state, batch)
  assert int(states["sgd"].step) == int(state.step) == 5
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), states["sgd"].params,
               state.params)
  start, _, _ = train.create_train_state(make(), variants["frozen"])
  jax.tree.map(np.testing.assert_array_equal, states["frozen"].params, start.params)
  with pytest.raises(ValueError, match="repeats must be a positive int, got 0"):
    train.time_train_steps(variants, make, batch, repeats=0)


def test_checkpoint_round_trips_prng_keys_and_python_scalars(tmp_path):
  """nnx.Dropout state holds a typed key (the digest called np.asarray on it and raised); a
  Python int leaf saved but could never be restored."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  class WithDropout(nnx.Module):
    def __init__(self):
      self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(3))
      self.w = nnx.Param(jnp.arange(3.0))

  _, _, rest = nnx.split(WithDropout(), nnx.Param, ...)
  tree = {"step": 5, "w": jnp.arange(3.0), "state": nnx.to_pure_dict(rest)}
  manager = ckpt_lib.CheckpointManager(str(tmp_path / "c"))
  manager.save(1, tree)
  manager.wait()
  back = manager.restore_latest(tree)
  assert int(back["step"]) == 5
  np.testing.assert_array_equal(back["w"], tree["w"])
  key = back["state"]["drop"]["rngs"]["key"]
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(
      tree["state"]["drop"]["rngs"]["key"]))
  assert ckpt_lib.tree_digest(back) == ckpt_lib.tree_digest(tree)
  other = jax.tree.map(lambda x: x, tree)
  other["state"]["drop"]["rngs"]["key"] = jax.random.key(4)
  assert ckpt_lib.tree_digest(other) != ckpt_lib.tree_digest(tree)


def test_a_record_holding_fields_now_resume_free_still_resumes(tmp_path):
  """A run_config.json written before a field became resume-free (e.g. pipeline.*) matches."""
  from configs import vgg_cifar10_slimming  # pylint: disable=import-outside-toplevel
  c = vgg_cifar10_slimming.get_config("l1,smoke")
  old = dict(train._result_fields(c), **{"pipeline.prune_fraction": 0.7,
                                         "pipeline.finetune.num_epochs": 1.0})
  with open(tmp_path / "run_config.json", "w") as f:
    json.dump(old, f)
  train.check_run_config(str(tmp_path), c, resuming=True, write=False)
  c.lr.base = 0.5
  with pytest.raises(ValueError, match=r"lr.base: 0.1 -> 0.5"):
    train.check_run_config(str(tmp_path), c, resuming=True, write=False)
