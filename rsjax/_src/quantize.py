"""Symmetric weight quantization to the hardware's ``weight_bits``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

PER = ("layer", "column")


def quantize_weights(w, bits: int, *, per: str = "layer"):
  """Quantizes weights to signed ``bits``-bit integers with a scale.

  Symmetric, round-to-nearest: ``q = clip(round(w / scale), -qmax, qmax)``
  with ``qmax = 2^(bits-1) - 1`` and ``scale = max|w| / qmax`` (1 where the
  weights are all zero), so ``w ~= q * scale``.

  Args:
    w: weights; for ``per='column'`` the last axis is the output column (a
      crossbar matrix ``[rows, cols]``, a Dense or a Conv kernel).
    bits: weight precision, >= 2.
    per: ``'layer'`` (one scale) or ``'column'`` (one scale per output
      column). A shared layer uses a layer scale: a stored block serves
      several output columns, so their integers must agree.

  Returns:
    ``(q, scale)``: ``q`` int32 like ``w``; ``scale`` float32, a scalar or
    ``[cols]``.
  """
  if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
    raise ValueError(f"bits must be an int in [2, 16], got {bits!r}")
  if per not in PER:
    raise ValueError(f"per must be one of {PER}, got {per!r}")
  if per == "column" and jnp.ndim(w) < 1:
    raise ValueError("per='column' needs at least a 1-D array")
  return _quantize(jnp.asarray(w, jnp.float32), bits=bits, per=per)


# One compiled program per shape: run op by op, quantizing a model's
# layers (exporting it, quantizing it for evaluation) compiled every
# operation for every layer shape.
@functools.partial(jax.jit, static_argnames=("bits", "per"))
def _quantize(w, *, bits: int, per: str):
  qmax = 2 ** (bits - 1) - 1
  if per == "layer":
    amax = jnp.max(jnp.abs(w))
  else:
    amax = jnp.max(jnp.abs(w.reshape(-1, w.shape[-1])), axis=0)
  scale = jnp.where(amax > 0, amax / qmax, 1.0).astype(jnp.float32)
  q = jnp.clip(jnp.round(w / _broadcast(scale, w.ndim)), -qmax, qmax)
  return q.astype(jnp.int32), scale


def _broadcast(scale, ndim: int):
  """A scalar or per-column scale shaped to broadcast over ``ndim`` axes."""
  return scale.reshape((1,) * (ndim - scale.ndim) + scale.shape)


def dequantize(q, scale):
  """``q * scale`` in float32 (scale broadcasts over the last axis)."""
  q = jnp.asarray(q, jnp.float32)
  return q * _broadcast(jnp.asarray(scale, jnp.float32), q.ndim)
