"""vgg8 on CIFAR-10: :func:`experiments.configs._common.cifar10`."""

from experiments.configs import _common


def get_config():
  return _common.cifar10("vgg8")
