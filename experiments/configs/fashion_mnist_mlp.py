"""MLP (300-100) on Fashion-MNIST."""

import ml_collections

from experiments.configs import _common


def get_config() -> ml_collections.ConfigDict:
  return _common.based_on_default("mlp", "fashion_mnist")
