"""resnet32 on CIFAR-10 (TFDS 'cifar10', see experiments/data.py).

Expected run time on one NVIDIA H200: not measured; extrapolated from the
measured cifar10_resnet20 (about 14 min, half of its step time is the numpy
input pipeline) by the 1.6x compute: roughly 18-20 min. See
experiments/benchmarks/CONFIG_RUNTIME.md.
"""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  return _common.cifar10("resnet32")
