"""sparsejax: sparse and compressed neural networks in JAX.

Pure functions on parameter pytrees (``sparsejax.masks``, ``sparsejax.prox``,
``sparsejax.schedules``), Optax gradient transformations built on them
(``sparsejax.optim``), Flax NNX models, input pipelines (``sparsejax.data``)
and a config-driven trainer (``sparsejax.train``, imported on demand).
"""

from sparsejax import masks
from sparsejax import models
from sparsejax import optim
from sparsejax import prox
from sparsejax import schedules
from sparsejax import tree

__version__ = "0.1.0"

__all__ = ["masks", "models", "optim", "prox", "schedules", "tree"]
