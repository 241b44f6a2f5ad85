"""vgg16 on CIFAR-10 (TFDS 'cifar10', see experiments/data.py).

Expected run time on one NVIDIA H200: not measured; VGG-16's CIFAR compute
per image is below the measured VGG-8's (whose 512-wide layers run at
larger resolutions), so roughly the measured cifar10_vgg8's 12-13 min, at
most about 20 min. See experiments/benchmarks/CONFIG_RUNTIME.md.
"""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  return _common.cifar10("vgg16")
