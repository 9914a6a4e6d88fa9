"""Sparse weight formats and sparse matmul kernels (Pallas, XLA, references).

Formats (:mod:`sparsejax.kernels.formats`): :class:`BlockSparse` (block
compressed by output block), :class:`BalancedBlockSparse` (every output block
stores the same number of blocks) and :class:`NMSparse` (N:M with in-group
positions), built from a dense weight and a :mod:`sparsejax.masks` mask.

Ops: :func:`bsr_matmul` and :func:`nm_matmul` compute ``x @ W`` for
activations ``(..., K)`` and a sparse ``(K, N)`` weight -- a Pallas kernel on
GPU/TPU, the XLA path of :mod:`sparsejax.kernels.cpu` on a CPU -- with a
``jax.custom_vjp`` for the gradients with respect to ``x`` and the stored
values; ``*_reference`` are the pure-``jnp`` references.
"""

from sparsejax.kernels.bsr import bsr_matmul
from sparsejax.kernels.bsr import bsr_matmul_reference
from sparsejax.kernels.formats import BalancedBlockSparse
from sparsejax.kernels.formats import BlockSparse
from sparsejax.kernels.formats import NMSparse
from sparsejax.kernels.formats import SparseFormat
from sparsejax.kernels.formats import balanced_block_mask
from sparsejax.kernels.formats import to_dense
from sparsejax.kernels.nm import nm_matmul
from sparsejax.kernels.nm import nm_matmul_reference

__all__ = [
    "BalancedBlockSparse",
    "BlockSparse",
    "NMSparse",
    "SparseFormat",
    "balanced_block_mask",
    "bsr_matmul",
    "bsr_matmul_reference",
    "nm_matmul",
    "nm_matmul_reference",
    "to_dense",
]
