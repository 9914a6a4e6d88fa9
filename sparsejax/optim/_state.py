"""Finding a transform's state inside a (nested) optimizer state."""

from __future__ import annotations

from typing import Any

import jax


def find_states(opt_state: Any, state_type: type) -> list[Any]:
  """Returns every ``state_type`` instance inside ``opt_state``, in tree order.

  Works through ``optax.chain`` tuples, ``inject_hyperparams``,
  ``MultiSteps`` and ``nnx.Optimizer`` states (pass ``optimizer.opt_state``).

  Example:
    >>> import optax
    >>> from sparsejax.optim import magnitude_pruning, MagnitudePruningState
    >>> tx = optax.chain(optax.sgd(0.1), magnitude_pruning(
    ...     0.5, begin_step=0, end_step=10, update_every=1))
    >>> state = tx.init({"kernel": jax.numpy.ones((2, 2))})
    >>> [type(s).__name__ for s in find_states(state, MagnitudePruningState)]
    ['MagnitudePruningState']
  """
  found = []

  def visit(x):
    if isinstance(x, state_type):
      found.append(x)
      return True
    return False

  jax.tree_util.tree_flatten(opt_state, is_leaf=visit)
  return found
