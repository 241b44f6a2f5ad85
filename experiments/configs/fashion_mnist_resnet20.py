"""ResNet-20 (CIFAR-style, 16-32-64 channels) on Fashion-MNIST, sized for
one GPU (a CPU trains it at a few steps a second)."""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  config = _common.based_on_default("resnet20", "fashion_mnist")
  config.train.steps = 3000
  config.train.checkpoint_every = 1000
  config.train.log_every = 250
  config.share.steps = 1500
  config.finetune.steps = 1500
  return config
