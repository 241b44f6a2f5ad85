"""The jitted paths are accelerator-safe: no float64, no host round-trips.

Each per-step path (the optax wrappers' update steps with re-clustering
inside the step, the crossbar emulator's per-input calls, whole-model
emulation, k-means) is traced with ``jax.make_jaxpr`` as it runs on an
accelerator (x64 off: an explicit float64 request is caught by JAX's
warning), and the jaxpr is walked recursively through the sub-jaxprs of
``cond``/``while``/``scan``/``pjit``/``custom_jvp``/``custom_vjp``. A value of
float64/complex128, a host callback or a transfer to the host fails the
test. One step of each wrapper then runs under
``jax.transfer_guard("disallow")`` with its inputs already on the device.
"""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsjax
from rsjax import kernels as rk
from rsjax.kernels import crossbar

# Primitives that call back into Python on the host or move data to it.
HOST_PRIMITIVES = frozenset({
    "pure_callback", "io_callback", "debug_callback", "callback",
    "outside_call", "host_callback_call", "infeed", "outfeed",
    "debug_print",
})
WIDE_DTYPES = frozenset({"float64", "complex128"})
HW = rsjax.HardwareSpec(adc_bits=4)


@pytest.fixture(autouse=True)
def _as_on_an_accelerator(monkeypatch):
  """Traces take the accelerator's k-means (XLA's): on a CPU without a
  persistent compilation cache a jitted k-means calls the NumPy backend
  back from the program, by design."""
  from rsjax._src import kmeans  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(kmeans, "_calls_back", lambda: False)


def _sub_jaxprs(value):
  """The jaxprs held in one equation parameter (a list of branches too)."""
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _wide(aval) -> bool:
  return str(getattr(aval, "dtype", "")) in WIDE_DTYPES


def _host_transfer(eqn) -> bool:
  if eqn.primitive.name != "device_put":
    return False
  kinds = [getattr(d, "memory_kind", None) for d in eqn.params.get(
      "devices", ()) if d is not None]
  return any(k is not None and "host" in str(k) for k in kinds)


def hazards(closed_jaxpr) -> list[str]:
  """Float64 values, host callbacks and host transfers in a jaxpr, nested."""
  found = []

  def walk(jaxpr, where):
    for var in list(jaxpr.invars) + list(jaxpr.constvars):
      if _wide(var.aval):
        found.append(f"{where}: input {var} is {var.aval}")
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name in HOST_PRIMITIVES:
        found.append(f"{where}/{name}: host callback")
      if _host_transfer(eqn):
        found.append(f"{where}/{name}: transfer to host memory")
      for var in eqn.outvars:
        if _wide(var.aval):
          src = eqn.source_info.traceback
          frame = ""
          if src is not None:
            user = [f for f in src.frames if "/jax/" not in f.file_name]
            if user:
              frame = f" at {user[0].file_name}:{user[0].line_num}"
          found.append(f"{where}/{name}: {var.aval}{frame}")
      for key, value in eqn.params.items():
        for sub in _sub_jaxprs(value):
          walk(sub, f"{where}/{name}[{key}]")

  walk(closed_jaxpr.jaxpr, "")
  return found


def trace(fn, *args):
  """``make_jaxpr`` as the step runs on an accelerator (x64 off).

  With x64 off JAX truncates float64 to float32, so a float64 the code asks
  for explicitly is caught by JAX's warning about it instead.
  """
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jaxpr = jax.make_jaxpr(fn)(*args)
  asked = [f"float64 requested: {w.message} ({w.filename}:{w.lineno})"
           for w in caught if "float64" in str(w.message)]
  return jaxpr, asked


def assert_safe(fn, *args):
  """Traces ``fn(*args)`` and fails on any hazard."""
  jaxpr, asked = trace(fn, *args)
  problems = asked + hazards(jaxpr)
  assert not problems, "\n".join(problems[:20])
  return jaxpr


# --- The walk can fail --------------------------------------------------------


def test_walk_flags_float64_in_a_nested_cond():
  def fn(x):
    return jax.lax.cond(
        x.sum() > 0, lambda v: (v.astype(jnp.float64) * 2).astype(v.dtype),
        lambda v: v, x)
  with jax.enable_x64(True):
    problems = hazards(jax.make_jaxpr(fn)(jnp.ones(3, jnp.float32)))
  assert any("float64" in p and "cond" in p for p in problems), problems
  # With x64 off (as on an accelerator) the request itself is flagged.
  with pytest.raises(AssertionError, match="float64 requested"):
    assert_safe(fn, jnp.ones(3, jnp.float32))


@pytest.mark.parametrize("make", [
    lambda x: jax.pure_callback(lambda a: a, jax.ShapeDtypeStruct(
        x.shape, x.dtype), x),
    lambda x: (jax.debug.print("x {}", x), x)[1],
])
def test_walk_flags_callbacks_inside_scan_and_jit(make):
  def fn(x):
    body = lambda c, _: (jax.jit(make)(c), None)
    return jax.lax.scan(body, x, None, length=2)[0]
  with pytest.raises(AssertionError, match="host callback"):
    assert_safe(fn, jnp.ones(3, jnp.float32))


def test_walk_passes_a_clean_function():
  jaxpr = assert_safe(lambda x: jnp.sin(x) * 2.0, jnp.ones(3, jnp.float32))
  assert jaxpr.jaxpr.eqns


# --- Training: the optax wrappers' update steps -------------------------------


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


_RULES = [rsjax.Rule("Conv_0/kernel", k=2, sparsity=0.25),
          rsjax.Rule("Dense_0/kernel", k=2, sparsity=0.5)]


def _net():
  model = _Net()
  x = jnp.ones((4, 6, 6, 1), jnp.float32)
  y = jnp.arange(4, dtype=jnp.int32)
  params = model.init(jax.random.key(0), x)["params"]
  return model, params, x, y


def _step_fn(model, tx):
  def step(params, opt_state, x, y):
    def loss(p):
      logits = model.apply({"params": rsjax.training_params(p, opt_state)}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return step


_WRAPPERS = {
    # optax.adam mixes a weak float and an int32 count, which the suite's
    # strict dtype promotion refuses: momentum SGD keeps a second state.
    "ste_sharing": lambda: rsjax.ste_sharing(
        optax.sgd(0.1, momentum=0.9), _RULES, HW, key=jax.random.key(1),
        recluster_every=1, prune=rsjax.PruneSchedule(0, 2, 1), n_init=1,
        max_iter=3),
    "distance_sharing": lambda: rsjax.distance_sharing(
        optax.sgd(0.1), _RULES, HW, key=jax.random.key(1),
        lam=optax.linear_schedule(0.0, 1e-2, 4), recluster_every=1, n_init=1,
        max_iter=3),
    "ou_pruning": lambda: rsjax.ou_pruning(
        optax.sgd(0.1, momentum=0.9), _RULES, HW, rsjax.PruneSchedule(0, 2, 1)),
}


def _finetune(params):
  share = rsjax.ste_sharing(optax.sgd(0.1), _RULES, HW, key=jax.random.key(1),
                            n_init=1, max_iter=3)
  state = share.init(params)
  params = rsjax.project(params, state)
  return rsjax.centroid_finetune(optax.sgd(0.1), _RULES, HW), params


@pytest.mark.parametrize("name", [*_WRAPPERS, "centroid_finetune"])
def test_training_step_is_accelerator_safe(name):
  model, params, x, y = _net()
  if name == "centroid_finetune":
    tx, params = _finetune(params)
  else:
    tx = _WRAPPERS[name]()
  opt_state = tx.init(params)
  step = _step_fn(model, tx)
  jaxpr = assert_safe(step, params, opt_state, x, y)
  if name in ("ste_sharing", "distance_sharing"):
    # Re-clustering runs inside the step: k-means' while loops are there.
    text = str(jaxpr)
    assert "cond[" in text and "while[" in text
  if name not in ("ste_sharing", "centroid_finetune"):
    return  # compiling every wrapper's step too would double the test's time
  # One step (a re-clustering and pruning one) and a second, on device data,
  # with every implicit transfer forbidden.
  jitted = jax.jit(step)
  args = jax.device_put((params, opt_state, x, y))
  jax.block_until_ready(jitted(*args))  # compiles outside the guard
  with jax.transfer_guard("disallow"):
    out = jitted(*args)
    out = jitted(*out, *args[2:])
  jax.block_until_ready(out)


def test_recluster_is_accelerator_safe():
  model, params, x, y = _net()
  del model, x, y
  tx = _WRAPPERS["ste_sharing"]()
  opt_state = tx.init(params)
  assert_safe(lambda p, s, k: rsjax.recluster(p, s, k, n_init=1, max_iter=3),
              params, opt_state, jax.random.key(2))


# --- k-means ------------------------------------------------------------------


@pytest.mark.parametrize("codebook_scope", ["row_block", "layer"])
def test_cluster_ous_is_accelerator_safe(codebook_scope):
  ous = jax.random.normal(jax.random.key(0), (3, 5, 9, 2), jnp.float32)
  assert_safe(lambda o, k: rsjax.cluster_ous(o, 2, key=k, n_init=2,
                                              max_iter=4,
                                              codebook_scope=codebook_scope),
              ous, jax.random.key(1))


# --- Emulation ----------------------------------------------------------------


def _layer(seed=0, k=20, n=6, m=5):
  rng = np.random.default_rng(seed)
  return (rng.integers(-127, 128, (k, n)).astype(np.int32),
          jnp.asarray(rng.integers(0, 256, (m, k)), jnp.int32))


@pytest.mark.parametrize("case", ["exact", "table", "streamed", "direct",
                                  "calibrated", "shared"])
def test_apply_is_accelerator_safe(case, monkeypatch):
  q_w, q_x = _layer()
  hw, key, device, adc_range = HW, None, None, None
  if case == "exact":
    hw = HW.replace(adc_bits=5)
  if case == "streamed":
    monkeypatch.setattr(crossbar, "TABLE_MAX_BYTES", 0)
  if case == "direct":
    key = jax.random.key(0)
    device = rk.Device(read=rk.ReadNoise(0.5, per="sum"))
  if case == "calibrated":
    hw, adc_range = HW.replace(adc_mode="calibrated"), 20
  if case == "shared":
    layer = rsjax.compress_kernel(q_w.astype(np.float32), HW, 2,
                                  key=jax.random.key(0))
    q_cb, _ = rsjax.quantize_weights(layer.codebook, HW.weight_bits)
    weights = rk.prepare_shared(q_cb, layer.index, HW, in_features=20,
                                out_features=6)
  else:
    weights = rk.prepare(q_w, hw, device=device, key=jax.random.key(1),
                         adc_range=adc_range)
  assert_safe(lambda w, x, k: rk.apply(w, x, key=k), weights, q_x, key)
  if case not in ("direct", "shared"):
    return  # one guarded run per kind of weights keeps the test short
  jitted = jax.jit(lambda w, x, k: rk.apply(w, x, key=k))
  args = jax.device_put((weights, q_x, key))
  jax.block_until_ready(jitted(*args))
  with jax.transfer_guard("disallow"):
    jax.block_until_ready(jitted(*args))


def test_apply_signed_inputs_is_accelerator_safe():
  q_w, q_x = _layer()
  weights = rk.prepare(q_w, HW)
  assert_safe(lambda w, x: rk.apply(w, x, signed_inputs=True), weights,
              q_x - 128)


def test_crossbar_conv_is_accelerator_safe():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 256, (2, 5, 5, 2)), jnp.int32)
  kernel = jnp.asarray(rng.integers(-127, 128, (3, 3, 2, 3)), jnp.int32)
  assert_safe(lambda v, kern: rk.crossbar_conv(v, kern, HW), x, kernel)


def test_emulated_training_ops_are_accelerator_safe():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 18)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(18, 6)), jnp.float32)
  assert_safe(jax.grad(lambda w_: rk.hwaware_layer(
      x, w_, None, HW, x_scale=jnp.float32(0.05)).sum()), w)


def test_emulate_linen_is_accelerator_safe():
  model, params, x, _ = _net()
  variables = {"params": params}
  share = rsjax.ste_sharing(optax.sgd(0.1), _RULES, HW, key=jax.random.key(1),
                            n_init=1, max_iter=3)
  state = share.init(params)
  params = rsjax.project(params, state)
  layers = rsjax.to_compressed(params, state)
  variables = {"params": rsjax.training_params(params, state)}
  plans = rk.program(rk.calibrate(model, [x], variables=variables), HW,
                     compressed={"Dense_0": layers["Dense_0/kernel"]})
  run = lambda v, batch, p: rk.emulate(model, p, variables=v)(batch)
  assert_safe(run, variables, x, plans)
  jitted = jax.jit(run)
  args = jax.device_put((variables, x, plans))
  jax.block_until_ready(jitted(*args))
  with jax.transfer_guard("disallow"):
    jax.block_until_ready(jitted(*args))
