"""Convolution on crossbars: im2col patches times the crossbar matrix.

Patches are built in the ``(kh, kw, cin)`` order of
:func:`rsjax.to_crossbar_matrix` (``cin`` fastest), so a Conv kernel
``[kh, kw, cin, cout]`` lowers with a plain reshape. With a lossless ADC
:func:`crossbar_conv` equals ``jax.lax.conv_general_dilated`` (NHWC, HWIO).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from rsjax._src import hardware
from rsjax._src import lowering
from rsjax.kernels import crossbar

Padding = str | Sequence[tuple[int, int]]


def _pair(v, name) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(a) for a in v)
  if len(v) != 2:
    raise ValueError(f"{name} must be an int or a pair, got {v}")
  return v


def conv_pads(spatial: Sequence[int], kernel_size, strides=1,
              padding: Padding = "SAME", dilation=1):
  """Explicit ``[(lo, hi)] * 2`` pads for NHWC input of ``spatial`` (H, W)."""
  kh, kw = _pair(kernel_size, "kernel_size")
  dh, dw = _pair(dilation, "dilation")
  window = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"padding must be SAME, VALID or pairs, got {padding}")
    return jax.lax.padtype_to_pads(tuple(spatial), window,
                                   _pair(strides, "strides"), padding.upper())
  pads = [tuple(int(a) for a in p) for p in padding]
  if len(pads) != 2:
    raise ValueError(f"explicit padding needs 2 (lo, hi) pairs, got {pads}")
  return pads


def im2col(x, kernel_size, strides=1, padding: Padding = "SAME",
           dilation=1):
  """Patches ``[B, Ho, Wo, kh * kw * C]`` of NHWC ``x`` (zero padded).

  Args:
    x: ``[B, H, W, C]`` (any dtype; pads are zeros).
    kernel_size: ``(kh, kw)`` or an int.
    strides: an int or a pair.
    padding: ``'SAME'``, ``'VALID'`` or ``[(lo, hi), (lo, hi)]``.
    dilation: kernel (rhs) dilation, an int or a pair.

  Returns:
    The patches, features in ``(kh, kw, cin)`` order.
  """
  if getattr(x, "ndim", None) != 4:
    raise ValueError(f"im2col expects NHWC input, got shape "
                     f"{getattr(x, 'shape', None)}")
  kh, kw = _pair(kernel_size, "kernel_size")
  sh, sw = _pair(strides, "strides")
  dh, dw = _pair(dilation, "dilation")
  pads = conv_pads(x.shape[1:3], (kh, kw), (sh, sw), padding, (dh, dw))
  xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
  wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"kernel {(kh, kw)} does not fit input {x.shape}")
  cols = []
  for i in range(kh):
    for j in range(kw):
      cols.append(xp[:, i * dh:i * dh + (ho - 1) * sh + 1:sh,
                     j * dw:j * dw + (wo - 1) * sw + 1:sw, :])
  patches = jnp.stack(cols, axis=3)
  return patches.reshape(x.shape[0], ho, wo, kh * kw * x.shape[3])


def conv_apply(weights: crossbar.CrossbarWeights, x, kernel_size,
               strides=1, padding: Padding = "SAME", dilation=1, *,
               key=None, signed_inputs: bool = False):
  """Emulated conv of unsigned int NHWC ``x`` on prepared crossbars.

  Args:
    weights: :func:`rsjax.kernels.prepare` of the lowered kernel
      ``[kh * kw * cin, cout]`` (or :func:`prepare_shared`).
    x: ``[B, H, W, cin]`` unsigned ints.
    kernel_size, strides, padding, dilation: as :func:`im2col`.
    key: read-noise key.
    signed_inputs: two's complement inputs (see :func:`rsjax.kernels.apply`).

  Returns:
    ``[B, Ho, Wo, cout]``, as :func:`rsjax.kernels.apply`.
  """
  patches = im2col(x, kernel_size, strides, padding, dilation)
  if patches.shape[-1] != weights.in_features:
    raise ValueError(f"patches have {patches.shape[-1]} features, the "
                     f"crossbar matrix has {weights.in_features} rows")
  return crossbar.apply(weights, patches, key=key,
                        signed_inputs=signed_inputs)


def crossbar_conv(x, kernel, hw: hardware.HardwareSpec, strides=1,
                  padding: Padding = "SAME", dilation=1, *, key=None,
                  adc_range=None, device=None, wires=None, adc=None,
                  dataflow: str = "auto",
                  signed_inputs: bool = False):
  """Emulated ``conv_general_dilated(x, kernel)`` (NHWC, HWIO) on crossbars.

  Args:
    x: ``[B, H, W, cin]`` unsigned ints in ``[0, 2^input_bits)``.
    kernel: ``[kh, kw, cin, cout]`` signed ints.
    hw: the hardware.
    strides, padding, dilation: as ``jax.lax.conv_general_dilated``
      (``rhs_dilation``).
    key, adc_range, device, wires, adc, dataflow, signed_inputs: as
      :func:`rsjax.kernels.crossbar_matmul`.

  Returns:
    ``[B, Ho, Wo, cout]``.
  """
  if getattr(kernel, "ndim", None) != 4:
    raise ValueError(f"kernel must be [kh, kw, cin, cout], got shape "
                     f"{getattr(kernel, 'shape', None)}")
  if getattr(x, "ndim", None) != 4 or x.shape[3] != kernel.shape[2]:
    raise ValueError(f"x must be [B, H, W, {kernel.shape[2]}], got shape "
                     f"{getattr(x, 'shape', None)}")
  k_prog, k_read = (None, None) if key is None else jax.random.split(key)
  weights = crossbar.prepare(lowering.to_crossbar_matrix(kernel), hw,
                             adc_range=adc_range, device=device,
                             wires=wires, adc=adc, key=k_prog,
                             dataflow=dataflow)
  return conv_apply(weights, x, kernel.shape[:2], strides, padding, dilation,
                    key=k_read, signed_inputs=signed_inputs)
