"""Flax Linen models for the experiments, and BatchNorm folding.

Every convolution / dense layer that BatchNorm follows is a :class:`ConvBN` /
:class:`DenseBN` holding a child ``conv`` (or ``dense``) and ``bn``. With
``use_bn=False`` the same model has no BatchNorm and biased layers instead:
:func:`fold_model_batchnorm` turns trained ``{'params', 'batch_stats'}``
into the parameters of that BN-free model, which is what a crossbar stores
(a crossbar holds one weight matrix per layer; BN's affine map folds into
it).

Parameter paths therefore look like ``params/conv1/conv/kernel``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import rsjax

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class ConvBN(nn.Module):
  """Conv (no bias) + BatchNorm, or a biased Conv when ``use_bn=False``."""

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: Any = "SAME"
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, self.kernel_size, self.strides,
                padding=self.padding, use_bias=not self.use_bn,
                kernel_init=nn.initializers.he_normal(), name="conv")(x)
    return _batchnorm(x, train) if self.use_bn else x


class DenseBN(nn.Module):
  """Dense (no bias) + BatchNorm, or a biased Dense when ``use_bn=False``."""

  features: int
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.features, use_bias=not self.use_bn, name="dense")(x)
    return _batchnorm(x, train) if self.use_bn else x


def _batchnorm(x, train: bool):
  """The ``bn`` child of the calling ``ConvBN`` / ``DenseBN``."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, name="bn")(x)


class MLP(nn.Module):
  """A multilayer perceptron on flattened images."""

  num_classes: int = 10
  hidden: Sequence[int] = (300, 100)
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    for i, h in enumerate(self.hidden):
      x = nn.relu(DenseBN(h, self.use_bn, name=f"fc{i + 1}")(x, train))
    return nn.Dense(self.num_classes, name="head")(x)


class LeNet5(nn.Module):
  """LeNet-5 (conv 6, conv 16, fc 120, fc 84), max pooling, ReLU.

  The first convolution is padded (``SAME``) so 28x28 inputs keep LeNet's
  32x32 geometry after it; 32x32 inputs work too.
  """

  num_classes: int = 10
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(ConvBN(6, (5, 5), use_bn=self.use_bn, name="conv1")(x, train))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(ConvBN(16, (5, 5), padding="VALID", use_bn=self.use_bn,
                       name="conv2")(x, train))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(DenseBN(120, self.use_bn, name="fc1")(x, train))
    x = nn.relu(DenseBN(84, self.use_bn, name="fc2")(x, train))
    return nn.Dense(self.num_classes, name="head")(x)


class ResidualBlock(nn.Module):
  """A basic residual block (two 3x3 convolutions)."""

  features: int
  strides: tuple[int, int] = (1, 1)
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.relu(ConvBN(self.features, (3, 3), self.strides,
                       use_bn=self.use_bn, name="conv1")(x, train))
    y = ConvBN(self.features, (3, 3), use_bn=self.use_bn, name="conv2")(
        y, train)
    if x.shape[-1] != self.features or self.strides != (1, 1):
      # Projection shortcut (option B): it maps onto a crossbar like any conv.
      x = ConvBN(self.features, (1, 1), self.strides, use_bn=self.use_bn,
                 name="shortcut")(x, train)
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """ResNet-6n+2 for CIFAR (He et al. 2016): 16/32/64 channels, n blocks."""

  depth: int = 20
  num_classes: int = 10
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
    n = (self.depth - 2) // 6
    x = nn.relu(ConvBN(16, use_bn=self.use_bn, name="stem")(x, train))
    return _residual_stages(x, train, ((16, n), (32, n), (64, n)),
                            self.use_bn, self.num_classes)


class ImageNetResNet(nn.Module):
  """ResNet-18/34 (basic blocks) for ImageNet-style inputs."""

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_classes: int = 1000
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(ConvBN(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                       use_bn=self.use_bn, name="stem")(x, train))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    stages = [(64 * 2**i, n) for i, n in enumerate(self.stage_sizes)]
    return _residual_stages(x, train, stages, self.use_bn, self.num_classes)


def _residual_stages(x, train: bool, stages, use_bn: bool, num_classes: int):
  """``(features, blocks)`` stages of residual blocks (each stage after the
  first halves the resolution), global pooling and the ``head``; called
  inside a ResNet's ``__call__`` (its children)."""
  for stage, (features, blocks) in enumerate(stages):
    for block in range(blocks):
      strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
      x = ResidualBlock(features, strides, use_bn,
                        name=f"stage{stage + 1}_block{block + 1}")(x, train)
  x = jnp.mean(x, axis=(1, 2))
  return nn.Dense(num_classes, name="head")(x)


class VGG(nn.Module):
  """CIFAR-style VGG: 3x3 conv stages with max pooling, then classifier.

  ``'M'`` in ``layers`` is a 2x2 max pool; pooling stops once the feature map
  is 1x1, so small inputs (28x28) work with every variant.
  """

  layers: Sequence[Any] = (64, "M", 128, "M", 256, "M", 512, "M", 512, "M")
  dense: Sequence[int] = (512,)
  num_classes: int = 10
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = 0
    for layer in self.layers:
      if layer == "M":
        if x.shape[1] > 1 and x.shape[2] > 1:
          x = nn.max_pool(x, (2, 2), (2, 2))
        continue
      conv += 1
      x = nn.relu(ConvBN(int(layer), use_bn=self.use_bn,
                         name=f"conv{conv}")(x, train))
    x = x.reshape(x.shape[0], -1)
    for i, h in enumerate(self.dense):
      x = nn.relu(DenseBN(h, self.use_bn, name=f"fc{i + 1}")(x, train))
    return nn.Dense(self.num_classes, name="head")(x)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M")
# VGG-8: 6 conv + 2 dense weight layers (as in the ReRAM compression papers).
_VGG8 = (128, 128, "M", 256, 256, "M", 512, 512, "M")

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "resnet20": functools.partial(CifarResNet, depth=20),
    "resnet32": functools.partial(CifarResNet, depth=32),
    "resnet56": functools.partial(CifarResNet, depth=56),
    "vgg8": functools.partial(VGG, layers=_VGG8, dense=(1024,)),
    "vgg16": functools.partial(VGG, layers=_VGG16, dense=(512,)),
    "resnet18": functools.partial(ImageNetResNet, stage_sizes=(2, 2, 2, 2)),
}


def create_model(name: str, *, num_classes: int, use_bn: bool = True,
                 **kwargs) -> nn.Module:
  """A model of the registry :data:`MODELS` by name."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
  return MODELS[name](num_classes=num_classes, use_bn=use_bn, **kwargs)


def init_variables(model: nn.Module, key, image_shape: Sequence[int]):
  """``{'params', 'batch_stats'?}`` for one input of ``image_shape``."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  return dict(jax.jit(functools.partial(model.init, train=False))(key, x))


def layer_positions(model, variables, image_shape) -> dict[str, int]:
  """MVMs per inference of each kernel path: a conv's output pixels."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)

  def apply(x):
    return model.apply(variables, x, train=False,
                       capture_intermediates=True, mutable=["intermediates"])

  _, state = jax.eval_shape(apply, x)
  inter = dict(rsjax.named_leaves(state["intermediates"]))
  out = {}
  for path, leaf in rsjax.named_leaves(variables):
    if not path.endswith("/kernel"):
      continue
    module = path[len("params/"):-len("/kernel")]
    shape = inter.get(f"{module}/__call__/0")
    if shape is not None:
      out[path] = int(np.prod(shape.shape[1:-1])) if leaf.ndim == 4 else 1
  return out


def inference_report(model, variables, layers, hw: rsjax.HardwareSpec,
                     image_shape) -> dict[str, Any]:
  """:func:`rsjax.compression_report` of ``layers`` with each one's crossbar
  MVMs per inference (:func:`layer_positions`)."""
  positions = layer_positions(model, variables, image_shape)
  return rsjax.compression_report(
      layers, hw, {k: v for k, v in positions.items() if k in layers})


def inference_energy(report, hw: rsjax.HardwareSpec,
                     layouts: Sequence[str]) -> dict[str, float] | None:
  """Total energy per inference (pJ) of each layout at ``hw``'s ADC.

  None at a resolution :class:`rsjax.CostModel` has no ADC figure for.
  """
  costs = rsjax.CostModel()
  if hw.adc_bits not in costs.adc_energy_pj:
    return None
  priced = rsjax.hardware_cost(report, hw, costs)["layouts"]
  return {k: priced[k]["energy_pj"]["total"] for k in layouts}


def fold_model_batchnorm(model: nn.Module, variables):
  """Folds every BatchNorm into the layer before it.

  Each :class:`ConvBN` / :class:`DenseBN` gets the kernel and bias of
  :func:`rsjax.fold_batchnorm`: in eval mode the BN-free model computes the
  same function.

  Args:
    model: a model of :data:`MODELS` built with ``use_bn=True``.
    variables: its ``{'params', 'batch_stats'}``.

  Returns:
    ``(bn_free_model, {'params': folded})``.
  """
  def fold(p, s):
    out = {}
    for name, sub in p.items():
      if not isinstance(sub, dict):
        out[name] = sub
        continue
      layer = next((k for k in ("conv", "dense") if k in sub), None)
      if layer is not None and "bn" in sub:
        bn, bn_stats = sub["bn"], s[name]["bn"]
        kernel, bias = rsjax.fold_batchnorm(
            sub[layer]["kernel"], sub[layer].get("bias"),
            mean=bn_stats["mean"], var=bn_stats["var"], scale=bn["scale"],
            offset=bn["bias"], epsilon=BN_EPSILON)
        out[name] = {layer: {"kernel": kernel, "bias": bias}}
      else:
        out[name] = fold(sub, s.get(name, {}))
    return out

  folded = fold(variables["params"], variables.get("batch_stats", {}))
  return model.clone(use_bn=False), {"params": folded}
