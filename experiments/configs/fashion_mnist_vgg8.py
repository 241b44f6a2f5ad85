"""VGG-8 on Fashion-MNIST (28x28x1), sized for one GPU.

VGG-8 is conv 128, 128, M, 256, 256, M, 512, 512, M + dense 1024 (see
experiments/models.py). With the default hardware (9x8 OUs, 8-bit weights in
2-bit cells: 9x2 weight blocks) its 512-wide layers have 256 column groups
per row-block, so sharing with k = 4 alone stores 1/64 of their blocks.

The schedule (3000 Adam steps for the float baseline, then 1000 sharing and
1000 fine-tune steps at learning rate 1e-4) is sized for one GPU: on a 2-core
CPU VGG-8 trains at well under 1 step/s. The compression stages train the
BatchNorm-folded model (no BatchNorm left), whose 512-wide layers have small
weights: at the default 1e-3 the sharing stage diverges (k = 4 points
collapse to chance accuracy), hence 1e-4. As is, the config trains the float
baseline and is itself a prune 0.3 + STE k = 8 compression point (the
BN-folded runs of RESULTS.md).

The better recipe is the ``vgg8_bn_*`` points of
experiments/study/fashion_mnist_grid.py: keep BatchNorm
(--config.compress.fold_bn=False), leave the first conv and the head
unshared (rules ``^conv1/ sparsity=P``, ``^head/ sparsity=P`` before the
shared ``kernel$ k=4 sparsity=P``), sharing and fine-tune at 1e-3 for
2000-4000 steps each (what it reached: RESULTS.md).
"""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  config = _common.based_on_default("vgg8", "fashion_mnist")
  config.train.steps = 3000
  config.train.checkpoint_every = 1000
  config.train.log_every = 250
  config.share.steps = 1000
  config.share.learning_rate = 1e-4
  config.finetune.steps = 1000
  config.finetune.learning_rate = 1e-4
  return config
