"""ResNet-18 on ImageNet (TFDS 'imagenet2012', manual download).

Expected run time on one GPU: the table of
experiments/benchmarks/CONFIG_RUNTIME.md, with the command that measures it.
"""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  config = _common.based_on_default("resnet18", "imagenet2012")
  config.data.augment = True
  config.data.image_size = 224
  config.train.steps = 450_000  # 90 epochs of 1.28M at batch 256
  config.train.batch_size = 256
  config.train.eval_batch_size = 250
  config.train.optimizer = "sgd"
  config.train.learning_rate = 0.1
  config.train.weight_decay = 1e-4
  config.train.warmup_steps = 5000
  config.train.checkpoint_every = 5000
  config.train.log_every = 100
  config.share.steps = 20_000
  config.share.learning_rate = 0.01
  config.share.recluster_every = 1000
  config.finetune.steps = 20_000
  config.finetune.learning_rate = 1e-3
  config.recipe.rules = ("kernel$ k=16 sparsity=0.3",)
  config.eval.emulate_limit = 500
  return config
