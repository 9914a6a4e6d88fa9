"""Sparsity algorithms as Optax gradient transformations.

Each transform chains with any optimizer. Transforms that add a penalty's
(sub)gradient go *before* the optimizer; transforms that land the parameters
on a constrained point (pruning masks, proximal steps) go *last*.
"""

from sparsejax.optim._state import find_states
from sparsejax.optim.group_lasso import SparseGroupLassoState
from sparsejax.optim.group_lasso import sgl_report
from sparsejax.optim.group_lasso import sparse_group_lasso
from sparsejax.optim.group_lasso import sparse_group_lasso_from_config
from sparsejax.optim.group_lasso import sparse_params
from sparsejax.optim.proximal_gradient import ProximalState
from sparsejax.optim.proximal_gradient import proximal
from sparsejax.optim.proximal_gradient import proximal_from_config
from sparsejax.optim.pruning import MagnitudePruningState
from sparsejax.optim.pruning import magnitude_pruning

__all__ = [
    "MagnitudePruningState",
    "ProximalState",
    "SparseGroupLassoState",
    "find_states",
    "magnitude_pruning",
    "proximal",
    "proximal_from_config",
    "sgl_report",
    "sparse_group_lasso",
    "sparse_group_lasso_from_config",
    "sparse_params",
]
