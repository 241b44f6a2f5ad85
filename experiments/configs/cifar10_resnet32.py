"""resnet32 on CIFAR-10 (TFDS 'cifar10', see experiments/data.py).

Expected run time on one GPU: the table of
experiments/benchmarks/CONFIG_RUNTIME.md, with the command that measures it.
"""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  return _common.cifar10("resnet32")
