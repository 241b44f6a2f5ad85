"""ResNet-20 (CIFAR-style, 16-32-64 channels) on Fashion-MNIST (28x28x1).

With the default hardware (9x2 weight blocks) the 16-64 wide layers have
8-32 column groups per row-block, so sharing ratios are bounded by those
(k = 2 stores at most 1/16 of a 64-wide layer's blocks).

The schedule (3000 Adam steps for the float baseline, then 1500 sharing and
1500 fine-tune steps at the default learning rate 1e-3) is sized for one
GPU: a CPU trains ResNet-20 at a few steps a second. As is, the config
trains the float baseline and is itself a prune 0.3 + STE k = 8 compression
point.
"""

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
