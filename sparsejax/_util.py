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


def zero_channels(a) -> np.ndarray:
  """Per channel (last axis) of a host array with ndim >= 1: True where all entries are 0.

  Also right when some axis has length 0 (``reshape(-1, n)`` cannot infer it).
  """
  a = np.asarray(a)
  return np.all(a.reshape(int(np.prod(a.shape[:-1])), a.shape[-1]) == 0, axis=0)


def _describe(c: np.ndarray) -> str:
  if c.ndim == 0:
    return repr(c.item())
  if np.any(np.isnan(c)):
    return f"an array of shape {c.shape} with NaN entries"
  return f"an array of shape {c.shape} with min {float(c.min())!r} and max {float(c.max())!r}"


def _allowed(low, high, low_open: bool, high_open: bool) -> str:
  if low is not None and high is not None:
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  if low is not None:
    return f"{'>' if low_open else '>='} {low:g}"
  if high is not None:
    return f"{'<' if high_open else '<='} {high:g}"
  return "a number"


def check_real(name: str, value, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, scalar: bool = False,
               finite: bool = False) -> None:
  """Checks that a concrete ``value`` is a real number (or array) in a range.

  The range is ``[low, high]``, each end open with ``low_open``/``high_open``
  and absent when None; NaN never passes. ``scalar`` asks for a 0-d value,
  ``finite`` rejects ±inf. Traced values (under ``jit`` or
  ``inject_hyperparams``) cannot be checked without a host sync and pass.

  Raises:
    TypeError: ``value`` is None, a bool, not a real number, or (``scalar``)
      not 0-d (checked on traced values too).
    ValueError: a concrete entry lies outside the range; the message names
      ``name``, the allowed range and the value.
  """
  kind = "a real scalar" if scalar else "a real number or array"
  if value is None or isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be {kind}, got {value!r}")
  if scalar and getattr(value, "ndim", 0) != 0:  # traced values have shapes too
    raise TypeError(f"{name} must be {kind}, got an array of shape {value.shape}")
  c = concrete(value)
  if c is None:
    return
  if c.dtype.kind not in "iuf":
    raise TypeError(f"{name} must be {kind}, got {value!r}")
  if scalar and c.ndim != 0:
    raise TypeError(f"{name} must be {kind}, got an array of shape {c.shape}")
  c = c.astype(np.float64)
  ok = ~np.isnan(c)
  if finite:
    ok &= np.isfinite(c)
  if low is not None:
    ok &= (c > low) if low_open else (c >= low)
  if high is not None:
    ok &= (c < high) if high_open else (c <= high)
  if not np.all(ok):
    qual = "finite, not NaN" if finite else "and not NaN"
    raise ValueError(f"{name} must be {_allowed(low, high, low_open, high_open)} "
                     f"({qual}), got {_describe(c)}")


def check_int(name: str, value, *, low: int = 0, hint: str = "") -> None:
  """Raises ``ValueError`` unless ``value`` is a Python or numpy int (not a
  bool) ``>= low``; the message names ``name`` (``hint`` follows the range)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be an int >= {low}{hint}, got {value!r}")


def check_positive_int(name: str, value, *, optional: bool = False) -> None:
  """Raises ``ValueError`` unless ``value`` is a positive Python or numpy int
  (not a bool), or ``None`` when ``optional``; the message names ``name``."""
  if optional and value is None:
    return
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int{' or None' if optional else ''}, "
                     f"got {value!r}")


def parse_list(flag: str, text: str, convert=str, *, allowed=None, low=None, high=None,
               high_open: bool = False, allow_empty: bool = False) -> list:
  """Parses a comma-separated command-line list, checking every entry.

  ``convert`` turns each entry into a value (``str``, ``int``, ``float``);
  ``allowed`` restricts the values; ``low``/``high`` bound numbers (``high``
  excluded with ``high_open``). Empty entries are skipped.

  Raises:
    ValueError: naming ``flag``, the bad entry and what is allowed.
  """
  out = []
  for item in (t.strip() for t in str(text).split(",")):
    if not item:
      continue
    try:
      v = convert(item)
    except ValueError:
      raise ValueError(f"{flag}: {item!r} is not a valid {convert.__name__}") from None
    if allowed is not None and v not in allowed:
      raise ValueError(f"{flag}: unknown entry {item!r}; allowed: {', '.join(map(str, allowed))}")
    if low is not None and not v >= low or high is not None and not (
        v < high if high_open else v <= high):
      rng = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}"
      raise ValueError(f"{flag}: {item!r} is outside {rng}{')' if high_open else ']'}")
    out.append(v)
  if not out and not allow_empty:
    raise ValueError(f"{flag}: no entries in {text!r}")
  return out
