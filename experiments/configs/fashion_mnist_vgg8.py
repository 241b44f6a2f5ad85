"""VGG-8 (experiments/models.py) on Fashion-MNIST, sized for one GPU.

Sharing and fine-tune run at 1e-4: on the BatchNorm-folded model (the
default compress.fold_bn) the sharing stage diverges at the default 1e-3.
The study's VGG-8 points keep BatchNorm and train at 1e-3
(experiments/study/fashion_mnist_grid.py).
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
