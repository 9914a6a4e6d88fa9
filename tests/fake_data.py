"""Small learnable stand-ins for MNIST and CIFAR-10, written as the data layer's ``.npz`` files.

Class ``c`` lights up a patch whose place depends on ``c`` (for CIFAR-10 also its colour
channel) over low-intensity noise, so a few steps of training separate the classes.
"""

import os

import numpy as np


def _images(rng, n, shape, paint):
  y = rng.integers(0, 10, size=n).astype(np.uint8)
  x = rng.integers(0, 60, size=(n,) + shape).astype(np.uint8)
  for i, c in enumerate(y):
    paint(x[i], int(c))
  return x, y


def _write(path, name, shape, paint, n_train, n_test, seed):
  rng = np.random.default_rng(seed)
  xtr, ytr = _images(rng, n_train, shape, paint)
  xte, yte = _images(rng, n_test, shape, paint)
  np.savez(os.path.join(path, f"{name}.npz"), x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
  return str(path)


def _paint_mnist(img, c):
  r, q = divmod(c, 5)
  img[2 + 12 * r: 8 + 12 * r, 2 + 5 * q: 8 + 5 * q] = 250


def _paint_cifar(img, c):
  r, q = divmod(c, 5)
  img[4 + 14 * r: 12 + 14 * r, 1 + 6 * q: 7 + 6 * q, c % 3] = 250


def write_fake_mnist(path, n_train: int = 640, n_test: int = 200, seed: int = 0) -> str:
  """Writes ``path/mnist.npz`` (28x28 uint8 digits, 6x6 class patch); returns ``path``."""
  return _write(path, "mnist", (28, 28), _paint_mnist, n_train, n_test, seed)


def write_fake_cifar10(path, n_train: int = 640, n_test: int = 200, seed: int = 0) -> str:
  """Writes ``path/cifar10.npz`` (32x32x3 uint8 images, 8x6 class patch); returns ``path``."""
  return _write(path, "cifar10", (32, 32, 3), _paint_cifar, n_train, n_test, seed)
