"""Every shipped config builds and names things the trainer knows; a CIFAR run prunes per layer."""

import glob
import importlib
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fake_data import write_fake_cifar10
from sparsejax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_VARIANTS = {
    "default": ["", "dense", "smoke", "smoke,dense"],
    "lenet300_mnist": ["", "dense", "smoke"],
    "cifar10_dense": ["resnet20", "vgg19,cpu", "resnet56,gmp", "vgg16,smoke,gmp", "resnet20,cpu"],
    "resnet_cifar10_trp": ["", "resnet32", "spatial", "dense", "cpu", "smoke", "resnet32,spatial,cpu"],
    "darts_cifar10": ["", "second_order", "second_order,exact", "cpu", "smoke",
                      "second_order,cpu"],
    "rarts_cifar10": ["", "jacobi", "cpu", "smoke", "cpu,jacobi"],
    "genotype_cifar10": ["", "cpu", "smoke"],
    "lenet5_mnist_sgl": ["", "tl1", "short,l1", "strong", "strong,smoke,lhalf"],
}


def _config_modules():
  # configs/_common.py and __init__.py are helpers, not configs.
  return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                if not os.path.basename(p).startswith("_"))


@pytest.mark.parametrize("name", _config_modules())
def test_config_validates(name):
  module = importlib.import_module(f"configs.{name}")
  assert module.__doc__ and "scripts/" in module.__doc__, "the docstring gives the launch command"
  if getattr(module, "SEARCH_CONFIG", False):  # a scripts/search.py config
    from sparsejax import search  # pylint: disable=import-outside-toplevel
    validate = search.validate_config
  else:
    validate = train.validate_config
  for variant in CONFIG_VARIANTS.get(name, [""]):
    validate(module.get_config(variant))


@pytest.mark.parametrize("name", _config_modules())
def test_config_rejects_an_unknown_variant(name):
  module = importlib.import_module(f"configs.{name}")
  with pytest.raises(ValueError, match=f"gpu.*configs/{name}.py|configs/{name}.py.*gpu"):
    module.get_config("gpu")


def test_trainer_configs_share_the_default_fields():
  """Every scripts/train.py config has the fields of configs/default.py (mesh, compaction...)."""
  from configs import default  # pylint: disable=import-outside-toplevel
  fields = set(default.get_config().keys())
  for name in _config_modules():
    module = importlib.import_module(f"configs.{name}")
    if not getattr(module, "SEARCH_CONFIG", False):
      assert fields <= set(module.get_config().keys()), name


def test_sgl_strong_variant_is_the_measured_command():
  """``lenet5_mnist_sgl.py:strong`` is the run BENCHMARKS.md reports (lam 3, beta_0 25, 100 ep)."""
  from configs import lenet5_mnist_sgl  # pylint: disable=import-outside-toplevel
  measured = lenet5_mnist_sgl.get_config()
  measured.algorithm.lam = 3.0
  measured.algorithm.beta = 25.0
  measured.num_epochs = 100.0
  measured.lr.boundaries_epochs = (20, 40, 60, 80)
  measured.algorithm.growth_every_epochs = 20.0
  assert lenet5_mnist_sgl.get_config("strong").to_dict() == measured.to_dict()
  smoke = lenet5_mnist_sgl.get_config("strong,smoke")
  assert (smoke.algorithm.lam, smoke.algorithm.beta, smoke.num_epochs) == (3.0, 25.0, 2.0)


def test_cifar10_dense_bad_variant():
  from configs import cifar10_dense  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="variants for configs/cifar10_dense.py"):
    cifar10_dense.get_config("resnet20,fast")


def test_cifar_resnet_smoke_run_prunes_each_layer(tmp_path):
  write_fake_cifar10(str(tmp_path), n_train=256, n_test=64)
  from configs import cifar10_dense  # pylint: disable=import-outside-toplevel
  c = cifar10_dense.get_config("resnet20,smoke,gmp")
  c.data.dir = str(tmp_path)
  c.data.train_subset = None
  c.data.test_subset = None
  c.model.kwargs = {"widths": (4, 8, 16)}
  c.batch_size = 32
  report = train.train_and_evaluate(c, str(tmp_path / "run"))
  # Uniform distribution: every conv/dense kernel holds exactly floor(0.9 n) zeros.
  layers = [l for l in report["layers"] if l["prunable"]]
  assert len(layers) == 1 + 18 + 1  # stem, 9 blocks x 2 convs, fc
  for l in layers:
    assert l["zeros"] == math.floor(np.float32(0.9) * l["params"]), l["path"]
  assert "cifar10.npz" in report["dataset_source"]


def _documented_launches():
  """Every ``python scripts/X.py --config configs/Y.py:variant`` the configs and docs show."""
  pattern = re.compile(r"python (scripts/\w+\.py) --config (configs/\w+\.py(?::[\w,]+)?)")
  found = set()
  for path in (glob.glob(os.path.join(ROOT, "configs", "*.py")) + glob.glob(os.path.join(
      ROOT, "scripts", "*.py")) + glob.glob(os.path.join(ROOT, "docs", "*.md")) +
               [os.path.join(ROOT, "README.md")]):
    with open(path, encoding="utf-8") as f:
      found.update(pattern.findall(f.read()))
  return sorted(found)


def test_documented_launch_commands_load_their_config():
  """Each script of a documented launch command loads its config; every documented variant builds.

  An unknown override (``--config.no_such_field``) stops the script right after
  the config file was imported and built, before any data or JAX work, so a
  script that cannot import ``configs.*`` fails here with a different error.
  One subprocess per (script, config file); the variants are built in-process.
  """
  launches = _documented_launches()
  assert len({s for s, _ in launches}) >= 3 and len(launches) >= 20, launches
  for _, config in launches:
    path, _, variant = config.partition(":")
    importlib.import_module(f"configs.{os.path.basename(path)[:-3]}").get_config(variant)
  for script, path in sorted({(s, c.partition(":")[0]) for s, c in launches}):
    proc = subprocess.run(
        [sys.executable, script, "--config", path, "--workdir", "unused",
         "--config.no_such_field=1"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        check=False)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode != 0 and last == "AttributeError: \"'no_such_field'\"", (
        f"python {script} --config {path}: {proc.stderr[-2000:]}")
