"""Shared helpers for the config files."""

import ml_collections

from experiments.configs import default


def based_on_default(model: str, dataset: str) -> ml_collections.ConfigDict:
  """The default config with another model and dataset."""
  config = default.get_config()
  config.model.name = model
  config.data.name = dataset
  return config


def cifar10(model: str) -> ml_collections.ConfigDict:
  """A CIFAR-10 config (SGD, augmentation, about 100 epochs).

  The data is TFDS 'cifar10' (experiments/data.py); the expected run time on
  one GPU is the table of experiments/benchmarks/CONFIG_RUNTIME.md, with the
  command that measures it.
  """
  config = based_on_default(model, "cifar10")
  config.data.augment = True
  config.train.steps = 39_000  # 100 epochs of 50k at batch 128
  config.train.optimizer = "sgd"
  config.train.learning_rate = 0.1
  config.train.weight_decay = 5e-4
  config.train.warmup_steps = 390
  config.train.eval_batch_size = 500
  config.train.checkpoint_every = 2000
  config.train.log_every = 100
  config.share.steps = 8000
  config.share.learning_rate = 0.01
  config.share.recluster_every = 500
  config.finetune.steps = 4000
  config.finetune.learning_rate = 1e-3
  return config
