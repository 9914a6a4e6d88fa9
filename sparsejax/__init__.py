"""sparsejax: sparse and compressed neural networks in JAX.

Pure functions on parameter pytrees (``sparsejax.masks``, ``sparsejax.prox``,
``sparsejax.schedules``), Optax gradient transformations built on them
(``sparsejax.optim``), Flax NNX models, input pipelines and a config-driven
trainer.
"""

__version__ = "0.1.0"
