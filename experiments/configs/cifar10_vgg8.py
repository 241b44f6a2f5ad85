"""vgg8 on CIFAR-10 (TFDS 'cifar10', see experiments/data.py)."""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  return _common.cifar10("vgg8")
