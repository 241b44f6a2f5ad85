"""Hardware-aware training: emulated layers with straight-through gradients.

The forward pass quantizes the float inputs (unsigned ``input_bits``, a given
scale) and weights (signed ``weight_bits``, max-abs scale), runs them on the
emulated crossbars and dequantizes. The backward pass is that of the float
``clip(x) @ w``: gradients pass straight through the DAC, ADC and weight
quantization, and are zero for inputs clipped at the input range (as PACT and
LSQ do). Written with ``stop_gradient`` so it composes with ``jit``, ``vmap``
and higher-order transforms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsjax._src import hardware
from rsjax._src import quantize
from rsjax.kernels import conv as conv_lib
from rsjax.kernels import crossbar


def emulated_matmul(x, w, hw: hardware.HardwareSpec, *, x_scale,
                    per: str = "layer", key=None, adc_range=None,
                    device=None, wires=None, adc=None,
                    nonideal=None, dataflow: str = "auto"):
  """``x @ w`` in float, emulated forward, straight-through backward.

  Args:
    x: ``[..., in_features]`` float inputs (non-negative; negatives clip to 0).
    w: ``[in_features, out_features]`` float weights.
    hw: the hardware.
    x_scale: input quantization step (a scalar; ``x ~= q * x_scale``).
    per: weight scale ``'layer'`` or ``'column'``.
    key, adc_range, device, wires, adc, nonideal, dataflow: as
      :func:`rsjax.kernels.crossbar_matmul`.

  Returns:
    ``[..., N]`` float32.
  """
  x = jnp.asarray(x, jnp.float32)
  w = jnp.asarray(w, jnp.float32)
  x_scale = jax.lax.stop_gradient(jnp.asarray(x_scale, jnp.float32))
  top = x_scale * jnp.float32(2**hw.input_bits - 1)
  x_clip = jnp.clip(x, 0.0, top)
  y_float = jnp.matmul(x_clip, w, precision=jax.lax.Precision.HIGHEST)
  qx = crossbar.quantize_inputs(jax.lax.stop_gradient(x), x_scale, hw)
  qw, w_scale = quantize.quantize_weights(jax.lax.stop_gradient(w),
                                          hw.weight_bits, per=per)
  y_int = crossbar.crossbar_matmul(qx, qw, hw, key=key, adc_range=adc_range,
                                   device=device, wires=wires, adc=adc,
                                   nonideal=nonideal, dataflow=dataflow)
  scale = x_scale * w_scale
  if scale.ndim:
    scale = scale.reshape((1,) * (y_int.ndim - 1) + (-1,))
  y_emul = y_int.astype(jnp.float32) * scale
  return y_float + jax.lax.stop_gradient(y_emul - y_float)


def emulated_conv(x, kernel, hw: hardware.HardwareSpec, strides=1,
                  padding="SAME", dilation=1, *, x_scale,
                  per: str = "layer", key=None, adc_range=None,
                  device=None, wires=None, adc=None,
                  nonideal=None, dataflow: str = "auto"):
  """NHWC/HWIO conv with an emulated forward and straight-through backward.

  Args:
    x: ``[B, H, W, cin]`` float inputs.
    kernel: ``[kh, kw, cin, cout]`` float kernel.
    hw, strides, padding, dilation: as :func:`rsjax.kernels.crossbar_conv`.
    x_scale, per, key, adc_range, device, wires, adc, nonideal, dataflow: as
      :func:`emulated_matmul`.

  Returns:
    ``[B, Ho, Wo, cout]`` float32.
  """
  patches = conv_lib.im2col(jnp.asarray(x, jnp.float32), kernel.shape[:2],
                            strides, padding, dilation)
  return emulated_matmul(patches, kernel.reshape(-1, kernel.shape[-1]), hw,
                         x_scale=x_scale, per=per, key=key,
                         adc_range=adc_range, device=device, wires=wires,
                         adc=adc, nonideal=nonideal, dataflow=dataflow)
