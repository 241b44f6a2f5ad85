"""vgg8 on CIFAR-10 (TFDS 'cifar10', see experiments/data.py).

Expected run time on one NVIDIA H200 (measured with
experiments/benchmarks/config_runtime_bench.py on fake data, 2026-11-28, see
experiments/benchmarks/CONFIG_RUNTIME.md): about 10 min without the emulated
evaluations (train 5.9 min at 113 steps/s, share 2.3, fine-tune 1.2,
evaluations 0.2, compiles included), plus the emulated evaluations and ADC
sweep, which were not measured (ResNet-20's took 2.3 min): about 12-13 min
in all. TFDS preparation and checkpoint writes are not included.
"""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  return _common.cifar10("vgg8")
