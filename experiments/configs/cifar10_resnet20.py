"""resnet20 on CIFAR-10 (TFDS 'cifar10', see experiments/data.py).

Expected run time on one NVIDIA H200 (measured with
experiments/benchmarks/config_runtime_bench.py on fake data, 2026-11-28, see
experiments/benchmarks/CONFIG_RUNTIME.md): about 14 min end to end (train
7.3 min at 95 steps/s, share 2.3, fine-tune 1.4, evaluations 0.3, emulated
evaluations and ADC sweep 2.3, compiles included). TFDS preparation and
checkpoint writes are not included.
"""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  return _common.cifar10("resnet20")
