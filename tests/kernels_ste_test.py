"""Straight-through emulated layers for hardware-aware training."""

import jax
import jax.numpy as jnp
import numpy as np

import rsjax
from rsjax import kernels as rk
from rsjax.kernels import ste

HW = rsjax.HardwareSpec(adc_bits=4)


def _data():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0, 1, (4, 19)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((19, 3)) * 0.1, jnp.float32)
  return x, w


def test_forward_is_dequantized_emulation():
  x, w = _data()
  scale = 1.0 / 255
  y = ste.emulated_matmul(x, w, HW, x_scale=scale)
  qx = rk.quantize_inputs(x, scale, HW)
  qw, ws = rsjax.quantize_weights(w, HW.weight_bits)
  want = np.asarray(rk.crossbar_matmul(qx, qw, HW), np.float32) * (scale * ws)
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-6, atol=1e-6)


def test_gradients_are_straight_through():
  x, w = _data()
  scale = 1.0 / 255
  f = lambda x, w: jnp.sum(ste.emulated_matmul(x, w, HW, x_scale=scale) ** 2)
  gx, gw = jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)
  y = ste.emulated_matmul(x, w, HW, x_scale=scale)
  # d/dw sum(y^2) with dy/dw = x (straight through): x^T (2 y).
  np.testing.assert_allclose(np.asarray(gw), np.asarray(x.T @ (2 * y)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gx), np.asarray((2 * y) @ w.T),
                             rtol=1e-4, atol=1e-5)


def test_clipped_inputs_get_no_gradient():
  x, w = _data()
  x = x.at[0, 0].set(-1.0).at[1, 1].set(5.0)
  gx = jax.grad(lambda x: jnp.sum(ste.emulated_matmul(
      x, w, HW, x_scale=1.0 / 255)))(x)
  assert gx[0, 0] == 0 and gx[1, 1] == 0 and gx[2, 2] != 0


def test_conv_ste_runs_under_jit_and_grad():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(0, 1, (2, 5, 5, 2)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 2, 4)) * 0.1, jnp.float32)
  loss = lambda k: jnp.mean(ste.emulated_conv(x, k, HW, 1, "SAME",
                                              x_scale=1.0 / 255) ** 2)
  val, grad = jax.jit(jax.value_and_grad(loss))(k)
  assert grad.shape == k.shape and np.isfinite(float(val))
  assert float(jnp.abs(grad).sum()) > 0
