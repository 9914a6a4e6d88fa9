"""Sparsity algorithms as Optax gradient transformations.

Each transform chains with any optimizer. Transforms that add a penalty's
(sub)gradient go *before* the optimizer; transforms that land the parameters
on a constrained point (pruning masks, proximal steps) go *last*.
"""

from sparsejax.optim._state import find_states
from sparsejax.optim.pruning import MagnitudePruningState
from sparsejax.optim.pruning import magnitude_pruning

__all__ = [
    "MagnitudePruningState",
    "find_states",
    "magnitude_pruning",
]
