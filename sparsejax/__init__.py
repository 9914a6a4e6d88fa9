"""sparsejax: sparse and compressed neural networks in JAX.

Pure functions on parameter pytrees (``sparsejax.masks``, ``sparsejax.prox``,
``sparsejax.schedules``), Optax gradient transformations built on them
(``sparsejax.optim``), Flax NNX models, sparse matmul kernels and layers
(``sparsejax.kernels``, ``sparsejax.nn``), input pipelines
(``sparsejax.data``), channel removal and low-rank export
(``sparsejax.compact``, ``sparsejax.lowrank``), sharded training
(``sparsejax.parallel``) and a config-driven trainer (``sparsejax.train``);
the modules in the second half are imported on demand.
"""

from sparsejax import kernels
from sparsejax import masks
from sparsejax import models
from sparsejax import nn
from sparsejax import optim
from sparsejax import prox
from sparsejax import schedules
from sparsejax import tree

__version__ = "0.1.0"

__all__ = ["kernels", "masks", "models", "nn", "optim", "prox", "schedules", "tree"]
