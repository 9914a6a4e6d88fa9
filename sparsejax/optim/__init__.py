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
from sparsejax.optim import slimming
from sparsejax.optim.slimming import ChannelMaskState
from sparsejax.optim.slimming import NetworkSlimmingState
from sparsejax.optim.slimming import SlimmingPenaltyState
from sparsejax.optim.slimming import channel_mask
from sparsejax.optim.slimming import network_slimming
from sparsejax.optim.slimming import removable_channels
from sparsejax.optim.slimming import apply_sparse_scales
from sparsejax.optim.slimming import set_bn_scales
from sparsejax.optim.slimming import slimming_penalty
from sparsejax.optim import trp
from sparsejax.optim.trp import NuclearSubgradientState
from sparsejax.optim.trp import TrainedRankPruningState
from sparsejax.optim.trp import add_nuclear_subgradient
from sparsejax.optim.trp import low_rank_params
from sparsejax.optim.trp import trained_rank_pruning
from sparsejax.optim.trp import trained_rank_pruning_from_config
from sparsejax.optim.trp import trp_chain

__all__ = [
    "ChannelMaskState",
    "MagnitudePruningState",
    "NetworkSlimmingState",
    "SlimmingPenaltyState",
    "channel_mask",
    "network_slimming",
    "removable_channels",
    "apply_sparse_scales",
    "set_bn_scales",
    "slimming_penalty",
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
    "NuclearSubgradientState",
    "TrainedRankPruningState",
    "add_nuclear_subgradient",
    "low_rank_params",
    "trained_rank_pruning",
    "trained_rank_pruning_from_config",
    "trp",
    "trp_chain",
]
