"""sparsejax: sparse and compressed neural networks in JAX.

Pure functions on parameter pytrees (``sparsejax.masks``, ``sparsejax.prox``,
``sparsejax.schedules``), Optax gradient transformations built on them
(``sparsejax.optim``), Flax NNX models, sparse matmul kernels and layers
(``sparsejax.kernels``, ``sparsejax.nn``), input pipelines
(``sparsejax.data``), channel removal and low-rank export
(``sparsejax.compact``, ``sparsejax.lowrank``), sharded training
(``sparsejax.parallel``), architecture search (``sparsejax.search``) and a
config-driven trainer (``sparsejax.train``, ``sparsejax.pipelines``).
``import sparsejax`` loads the pure-function, transform, model, kernel and
layer modules listed below; import the others explicitly
(``from sparsejax import compact``), so that using the transforms does not
load orbax, grain or TFDS.
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
