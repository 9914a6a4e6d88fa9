"""Helpers shared by the kernel modules: argument checks, backends, tile sizes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("auto", "pallas", "xla", "dense", "reference")


def check_impl(impl: Any) -> str:
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  return impl


def backend() -> str:
  return jax.default_backend()


def resolve_interpret(interpret: Any) -> bool:
  """``None`` -> interpret exactly when the default backend is neither GPU nor TPU."""
  if interpret is None:
    return backend() not in ("gpu", "tpu")
  if not isinstance(interpret, bool):
    raise ValueError(f"interpret must be None or a bool, got {interpret!r}")
  return interpret


def check_x(x: Any, K: int) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != K:
    raise ValueError(
        f"x must have shape (..., K) with K = {K} (the weight's input dimension), "
        f"got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    raise TypeError(f"x must have a floating dtype, got {x.dtype}")
  return x


def check_block_batch(block_batch: Any) -> int | None:
  if block_batch is None:
    return None
  if (isinstance(block_batch, (bool, np.bool_)) or not isinstance(block_batch, (int, np.integer))
      or block_batch < 1):
    raise ValueError(f"block_batch must be None or a positive int, got {block_batch!r}")
  return int(block_batch)


def acc_dtype(out_dtype) -> jnp.dtype:
  """Accumulator of a kernel writing ``out_dtype``: at least float32, float64 kept."""
  return jnp.promote_types(out_dtype, jnp.float32)


def is_pow2(v: int) -> bool:
  return v > 0 and v & (v - 1) == 0


def batch_tile(B: int, block_batch: int | None) -> int:
  """Rows of ``x`` per Pallas program: ``block_batch``, else the power of two
  in [16, 128] closest above ``B`` (Triton dots need >= 16 rows)."""
  if block_batch is not None:
    return block_batch
  p = 16
  while p < min(B, 128):
    p *= 2
  return p


def divisor_tile(dim: int, pref: int = 128, *, pow2: bool = False) -> int:
  """Largest divisor of ``dim`` not above ``pref`` (a power of two if ``pow2``)."""
  for t in range(min(dim, pref), 0, -1):
    if dim % t == 0 and (not pow2 or is_pow2(t)):
      return t
  return 1


def pad_rows(x: jax.Array, multiple: int) -> jax.Array:
  pad = -x.shape[0] % multiple
  return jnp.pad(x, ((0, pad), (0, 0))) if pad else x
