"""The front door for whole models: dispatch, equality with the Linen and
NNX implementations behind it, and the layers that would stay digital."""

import pkgutil
import warnings

from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import kernels as rk
from rsjax.kernels import _linen
from rsjax.kernels import _nnx
from kernels_model_test import LOSSY, NnxNet, _batches, _linen as linen_net


def _eq(a, b):
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _leaves_eq(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    _eq(x, y)


@pytest.mark.parametrize("jit", [False, True])
def test_linen_front_door_equals_the_linen_implementation(jit):
  model, variables, batches = linen_net()
  calib = rk.calibrate(model, batches, variables=variables, train=False)
  _leaves_eq(calib.layers, _linen.calibrate(model, variables, batches,
                                            train=False).layers)
  layers = rk.program(calib, LOSSY)
  emulated = rk.emulate(model, layers, variables=variables)
  want = _linen.emulate(model, variables, batches[0], layers, train=False)
  run = (jax.jit(lambda m, x: m(x, train=False)) if jit
         else lambda m, x: m(x, train=False))
  _eq(run(emulated, batches[0]), want)
  hw_calib = rk.calibrate_hwaware(model, batches, LOSSY, variables=variables,
                                  train=False)
  fwd = lambda v, x: rk.hwaware(model, LOSSY, hw_calib, variables=v)(
      x, train=False)
  _eq((jax.jit(fwd) if jit else fwd)(variables, batches[0]),
      _linen.hwaware_apply(model, variables, batches[0], LOSSY, hw_calib,
                           train=False))


@pytest.mark.parametrize("jit", [False, True])
def test_nnx_front_door_equals_the_nnx_implementation(jit):
  model = NnxNet(nnx.Rngs(0))
  model.eval()
  batches = _batches()
  calib = rk.calibrate(model, batches)
  _leaves_eq(calib.layers, _nnx.calibrate(model, batches).layers)
  layers = rk.program(calib, LOSSY)
  emulated = rk.emulate(model, layers)
  want = _nnx.emulate(model, layers)(batches[0])
  run = jax.jit(lambda m, x: m(x)) if jit else lambda m, x: m(x)
  _eq(run(emulated, batches[0]), want)
  hw_calib = rk.calibrate_hwaware(model, batches, LOSSY)
  with _nnx.hwaware(model, LOSSY, hw_calib) as swapped:
    want = swapped(batches[0])
  fwd = lambda m, x: rk.hwaware(m, LOSSY, hw_calib)(x)
  _eq((nnx.jit(fwd) if jit else fwd)(model, batches[0]), want)
  assert isinstance(model.conv, nnx.Conv)  # restored after the call


def test_emulated_linen_model_is_a_pytree_compiled_once():
  model, variables, batches = linen_net()
  calib = rk.calibrate(model, batches, variables=variables, train=False)
  traces = []

  @jax.jit
  def run(m, x):
    traces.append(1)
    return m(x, train=False)

  # Two fault seeds: other arrays, the same hardware.
  ys = [run(rk.emulate(model, rk.program(
      calib, LOSSY, device=rk.Device(programming=rk.Programming(0.1)),
      key=jax.random.key(seed)), variables=variables), batches[0])
        for seed in (0, 1)]
  assert len(traces) == 1
  assert not np.allclose(np.asarray(ys[0]), np.asarray(ys[1]))
  # Jitted directly, too.
  emulated = rk.emulate(model, rk.program(calib, LOSSY), variables=variables)
  _eq(jax.jit(emulated)(batches[0]), emulated(batches[0]))


def test_dispatch_errors():
  model, variables, batches = linen_net()
  net = NnxNet(nnx.Rngs(0))
  with pytest.raises(TypeError, match="variables=variables"):
    rk.calibrate(model, batches, train=False)
  with pytest.raises(TypeError, match="NNX model holds its own variables"):
    rk.calibrate(net, batches, variables=variables)
  with pytest.raises(TypeError, match="got function"):
    rk.calibrate(lambda x: x, batches)
  calib = rk.calibrate(model, batches, variables=variables, train=False)
  layers = rk.program(calib, LOSSY)
  with pytest.raises(TypeError, match="variables=variables"):
    rk.emulate(model, layers)
  with pytest.raises(TypeError, match="NNX model"):
    rk.emulate(net, layers, variables=variables)
  with pytest.raises(TypeError, match="rk.program"):
    rk.emulate(model, calib, variables=variables)
  hw_calib = rk.calibrate_hwaware(model, batches, LOSSY, variables=variables,
                                  train=False)
  with pytest.raises(TypeError, match="variables=variables"):
    rk.hwaware(model, LOSSY, hw_calib)
  with pytest.raises(TypeError, match="variables=variables"):
    rk.calibrate_hwaware(model, batches, LOSSY)
  with pytest.raises(ValueError, match="on_unmapped"):
    rk.calibrate(net, batches, on_unmapped="skip")


class LinenMixed(nn.Module):
  """A Dense beside layers the emulator does not map."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(6, name="fc")(x)
    x = nn.DenseGeneral(6, name="general")(x)
    x = nn.Einsum((6, 4), "bi,io->bo", name="mix")(x)
    return x


class NnxMixed(nnx.Module):

  def __init__(self, rngs):
    self.fc = nnx.Linear(5, 6, rngs=rngs)
    self.general = nnx.LinearGeneral(6, 6, rngs=rngs)
    self.mix = nnx.Einsum("bi,io->bo", (6, 4), rngs=rngs)

  def __call__(self, x):
    return self.mix(self.general(self.fc(x)))


def _mixed(flavour):
  x = jnp.asarray(np.random.default_rng(0).random((3, 5)), jnp.float32)
  if flavour == "linen":
    model = LinenMixed()
    return model, {"variables": model.init(jax.random.key(0), x)}, x
  return NnxMixed(nnx.Rngs(0)), {}, x


@pytest.mark.parametrize("flavour", ["linen", "nnx"])
def test_a_layer_that_stays_digital_is_reported(flavour):
  model, kw, x = _mixed(flavour)
  with pytest.warns(rk.DigitalLayerWarning) as record:
    calib = rk.calibrate(model, [x, x], **kw)
  assert len(record) == 1
  message = str(record[0].message)
  assert "general" in message and "mix" in message
  assert "Einsum" in message and "fc" not in message.split(":")[1]
  assert list(calib.layers) == ["fc"]
  with pytest.raises(ValueError, match="mix"):
    rk.calibrate(model, [x], on_unmapped="error", **kw)
  with pytest.warns(rk.DigitalLayerWarning):
    rk.calibrate_hwaware(model, [x], LOSSY, **kw)
  # Left digital on purpose: rules that exclude them, or 'ignore'.
  with warnings.catch_warnings():
    warnings.simplefilter("error", rk.DigitalLayerWarning)
    rk.calibrate(model, [x], rules="fc", on_unmapped="error", **kw)
    rk.calibrate(model, [x], on_unmapped="ignore", **kw)


def test_no_public_name_hides_a_module():
  # `from rsjax.kernels import x` must give the module x, not a function.
  modules = {m.name for m in pkgutil.iter_modules(rk.__path__)}
  assert not modules & set(rk.__all__)
