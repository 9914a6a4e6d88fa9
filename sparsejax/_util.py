"""Small private helpers shared by the argument checks of several modules."""

from __future__ import annotations

import jax
import numpy as np


def concrete(v) -> np.ndarray | None:
  """The value of ``v`` as a numpy array, or None when it is traced.

  Argument checks use it to validate concrete hyperparameters eagerly while
  letting traced ones (under ``jit`` or ``inject_hyperparams``) pass through.
  """
  if isinstance(v, jax.core.Tracer):
    return None
  try:
    return np.asarray(v)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None
