"""Test-session setup: keeps JAX on the CPU and logs quiet; puts the repo root on sys.path."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import logging  # pylint: disable=g-import-not-at-top

logging.getLogger("absl").setLevel(logging.WARNING)
