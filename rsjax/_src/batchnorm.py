"""Folding an inference-mode BatchNorm into the layer before it.

A crossbar stores one weight matrix per layer, so a BatchNorm that follows a
Dense or Conv layer is folded into it: in inference mode
``BN(x W + b) = x W' + b'`` with, per output column,
``s = scale / sqrt(var + epsilon)``, ``W' = W * s`` and
``b' = (b - mean) * s + offset``.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp


def _check_channels(name: str, value, channels: int):
  """Raises unless ``value`` is a scalar or ``[channels]``."""
  shape = jnp.shape(value)
  if shape not in ((), (channels,)):
    raise ValueError(f"{name} must be a scalar or [{channels}] (one value per "
                     f"output column of the kernel), got shape {shape}")


def fold_batchnorm(kernel, bias=None, *, mean, var, scale=None, offset=None,
                   epsilon: float = 1e-5):
  """The kernel and bias of a layer with the BatchNorm after it folded in.

  Args:
    kernel: ``[..., N]`` weights whose last axis is the output column, e.g. a
      Dense ``[in, out]`` or a Conv ``[kh, kw, cin, cout]`` kernel (or its
      crossbar matrix).
    bias: ``[N]`` bias of the layer, or None for a layer without one.
    mean: the BatchNorm's running mean, ``[N]`` (or a scalar).
    var: its running variance, ``[N]`` (or a scalar).
    scale: its learned scale (``gamma``), ``[N]``, a scalar, or None for a
      BatchNorm without one (1).
    offset: its learned offset (``beta``; Flax calls it ``bias``), ``[N]``,
      a scalar, or None for a BatchNorm without one (0).
    epsilon: the BatchNorm's epsilon, added to ``var``.

  Returns:
    ``(kernel', bias')``: ``kernel * s`` (``s`` broadcast over the last
    axis, shape of ``kernel``) and ``(bias - mean) * s + offset`` (``[N]``;
    ``bias`` counts as 0 when None), with ``s = scale / sqrt(var +
    epsilon)``. The dtype follows JAX's promotion of the inputs.

  Raises:
    ValueError: if ``kernel`` is a scalar, if ``bias`` is not ``[N]`` or a
      statistic neither a scalar nor ``[N]``, or if ``epsilon`` is not a
      non-negative number.
  """
  if jnp.ndim(kernel) < 1:
    raise ValueError("kernel must have an output-column axis (at least 1-D), "
                     f"got shape {jnp.shape(kernel)}")
  if (isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real)
      or not epsilon >= 0):
    raise ValueError(f"epsilon must be a non-negative number, got "
                     f"{epsilon!r}")
  channels = jnp.shape(kernel)[-1]
  if bias is not None and jnp.shape(bias) != (channels,):
    raise ValueError(f"bias must be [{channels}] (one value per output "
                     f"column of the kernel), got shape {jnp.shape(bias)}")
  stats = {"mean": mean, "var": var, "scale": scale, "offset": offset}
  for name, value in stats.items():
    if value is not None:
      _check_channels(name, value, channels)
  s = jax.lax.rsqrt(jnp.asarray(var) + epsilon)
  if scale is not None:
    s = scale * s
  # Broadcasting a scalar s gives the [N] bias every layer has.
  s = jnp.broadcast_to(s, (channels,))
  shifted = -jnp.asarray(mean) if bias is None else bias - mean
  new_bias = shifted * s
  if offset is not None:
    new_bias = new_bias + offset
  return kernel * s.reshape((1,) * (jnp.ndim(kernel) - 1) + (-1,)), new_bias
