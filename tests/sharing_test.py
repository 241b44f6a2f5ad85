"""STE sharing, the distance loop and the centroid fine-tune (Linen, NNX)."""

import contextlib

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import rsjax

from rsjax._src import blockops
from rsjax._src import finalize
from rsjax._src import finetune
from rsjax._src import pruning
from rsjax._src import rules as rules_lib
from rsjax._src import sharing

BLOCK = (9, 2)


def _zero_blocks(kernel, plan):
  return np.asarray(jnp.all(blockops.kernel_to_ous(kernel, plan) == 0,
                            axis=(2, 3)))


@pytest.mark.parametrize("jit", [False, True])
def test_ste_gradient_is_analytic(jit):
  w = jax.random.normal(jax.random.key(0), (18, 8))
  x = jax.random.normal(jax.random.key(1), (5, 18))
  t = jax.random.normal(jax.random.key(2), (5, 8))
  tx = sharing.ste_sharing(optax.sgd(1.0), [rules_lib.Rule("w", k=2)], BLOCK,
                           key=jax.random.key(3))
  params = {"w": w}
  state = tx.init(params)
  s = state.layers["w"]
  z = blockops.shared_kernel(s.codebook, s.index, s.plan)

  def loss(p):
    y = x @ sharing.training_params(p, state)["w"]
    return 0.5 * jnp.sum((y - t) ** 2)

  fn = jax.jit(jax.value_and_grad(loss)) if jit else jax.value_and_grad(loss)
  value, grad = fn(params)
  # Forward with Z exactly, gradient x^T (x Z - t) straight to W.
  np.testing.assert_allclose(value, 0.5 * jnp.sum((x @ z - t) ** 2),
                             rtol=1e-6)
  np.testing.assert_allclose(grad["w"], x.T @ (x @ z - t), rtol=1e-5,
                             atol=1e-5)
  assert len(np.unique(np.asarray(z).reshape(2, 9, 4, 2).transpose(
      0, 2, 1, 3).reshape(2, 4, 18), axis=1)) <= 2


@pytest.mark.parametrize("jit", [False, True])
def test_distance_regulariser_gradient(jit):
  params = {"w": jax.random.normal(jax.random.key(0), (18, 8)),
            "v": jnp.ones((18, 4))}
  lam = 0.3
  tx = sharing.distance_sharing(optax.sgd(1.0), [rules_lib.Rule("w", k=2)],
                                BLOCK, key=jax.random.key(1), lam=lam)
  state = tx.init(params)
  s = state.layers["w"]
  z = blockops.shared_kernel(s.codebook, s.index, s.plan)
  grad = jax.grad(lambda p: lam * sharing.distance_loss(p, state))(params)
  np.testing.assert_allclose(grad["w"], 2 * lam * (params["w"] - z),
                             rtol=1e-6)
  np.testing.assert_array_equal(grad["v"], 0.0)
  # The wrapper adds that gradient to the task gradient (zero here).
  update = jax.jit(tx.update) if jit else tx.update
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = update(zeros, state, params)
  np.testing.assert_allclose(updates["w"], -2 * lam * (params["w"] - z),
                             rtol=1e-6)
  np.testing.assert_array_equal(updates["v"], 0.0)


class _Linen(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), padding="VALID", name="conv")(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(16, name="fc1")(x))
    return nn.Dense(4, name="fc2")(x)


class _Nnx(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 8, (3, 3), padding="VALID", rngs=rngs)
    self.fc1 = nnx.Linear(128, 16, rngs=rngs)
    self.fc2 = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x))
    x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return self.fc2(x)


RULES = [rules_lib.Rule("conv/kernel", k=2, sparsity=0.25),
         rules_lib.Rule("fc1/kernel", k=2, sparsity=0.5),
         rules_lib.Rule("fc2/kernel", sparsity=0.25)]


def _frontend(kind):
  """(params, apply(params, x)) for a tiny conv net in Linen or NNX."""
  x = jnp.zeros((1, 6, 6, 2))
  if kind == "linen":
    model = _Linen()
    params = model.init(jax.random.key(0), x)["params"]
    return params, lambda p, x: model.apply({"params": p}, x)
  graphdef, params, rest = nnx.split(_Nnx(nnx.Rngs(0)), nnx.Param, ...)
  return params, lambda p, x: nnx.merge(graphdef, p, rest)(x)


def _optimizer(name):
  if name == "sgd":
    return optax.sgd(0.05, momentum=0.9), contextlib.nullcontext()
  # optax.adam's bias correction mixes float and int32 (strict promotion).
  return optax.adam(0.01), jax.numpy_dtype_promotion("standard")


def _train(tx, params, apply, steps, data, jit=True):
  x, y = data
  state = tx.init(params)

  def step(params, state):
    def loss(p):
      return jnp.mean((apply(sharing.training_params(p, state), x) - y) ** 2)
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step) if jit else step
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


# Eager (un-jitted) updates are covered by the single-update tests above; a
# whole eager training run takes minutes.
@pytest.mark.parametrize("frontend,opt", [("linen", "sgd"), ("nnx", "adam")])
def test_ste_then_finetune_then_export(frontend, opt, jit=True):
  params, apply = _frontend(frontend)
  inner, ctx = _optimizer(opt)
  data = (jax.random.normal(jax.random.key(1), (32, 6, 6, 2)),
          jax.random.normal(jax.random.key(2), (32, 4)))
  schedule = pruning.PruneSchedule(begin=0, end=4, every=2)
  with ctx:
    tx = sharing.ste_sharing(inner, RULES, BLOCK, key=jax.random.key(3),
                             recluster_every=3, prune=schedule)
    params, state = _train(tx, params, apply, 7, data, jit)
  plan = pruning.plans_of(state.layers)
  masks = {p: np.asarray(s.mask) for p, s in state.layers.items()}
  assert {p: int((~m).sum()) for p, m in masks.items()} == {
      "conv/kernel": 2, "fc1/kernel": 60, "fc2/kernel": 1}

  def check_sparsity(tree):
    kernels = pruning.kernels_of(tree, plan)
    for p in plan:
      np.testing.assert_array_equal(_zero_blocks(kernels[p], plan[p]),
                                    ~masks[p], err_msg=p)

  check_sparsity(params)
  check_sparsity(sharing.training_params(params, state))
  trained = apply(sharing.training_params(params, state), data[0])

  # Hard projection, then the centroid fine-tune on the same assignments.
  params = sharing.project(params, state)
  check_sparsity(params)
  np.testing.assert_array_equal(apply(params, data[0]), trained)
  with ctx:
    ft = finetune.centroid_finetune(inner, RULES, BLOCK)
    ft_params, ft_state = _train(ft, params, apply, 3, data, jit)
  for p, s in ft_state.layers.items():
    np.testing.assert_array_equal(s.mask, masks[p])
    if s.codebook is not None:
      np.testing.assert_array_equal(s.index >= 0, masks[p])
  check_sparsity(sharing.training_params(ft_params, ft_state))
  trained = apply(sharing.training_params(ft_params, ft_state), data[0])
  assert not np.array_equal(
      trained, apply(params, data[0]))  # the centroids moved

  comp = finalize.to_compressed(ft_params, ft_state)
  assert list(comp) == list(plan)
  for p, layer in comp.items():
    np.testing.assert_array_equal(np.asarray(layer.index) >= 0, masks[p])
    if plan[p].shared:
      assert layer.stored_per_row_block().max() <= plan[p].k
  exported = pruning.map_planned(lambda p, w: comp[p].to_kernel(), ft_params,
                                 plan)
  np.testing.assert_array_equal(apply(exported, data[0]), trained)


def test_reclustering_step_on_xla_agrees_with_the_callback(monkeypatch):
  """On a CPU (without a persistent compilation cache) the step
  re-clusters by calling the NumPy k-means back; elsewhere XLA's k-means
  is compiled into it. Same clusters."""
  from rsjax._src import kmeans  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  # Each row-block's column groups from 2 well separated blocks.
  centres = rng.normal(size=(2, 2, 9, 2)) * 5
  pick = rng.integers(0, 2, (2, 4))
  w = np.concatenate([np.concatenate(
      [centres[r, pick[r, g]] for g in range(4)], axis=1) for r in range(2)])
  params = {"w": jnp.asarray(w + rng.normal(size=w.shape) * 0.01,
                             jnp.float32)}
  tx = sharing.ste_sharing(optax.sgd(0.1), [rules_lib.Rule("w", k=2)], BLOCK,
                           key=jax.random.key(3), recluster_every=1)
  state = tx.init(params)
  grads = {"w": jnp.asarray(rng.normal(size=w.shape), jnp.float32)}
  out = {}
  for backend in ("callback", "xla"):
    monkeypatch.setattr(kmeans, "_calls_back",
                        lambda b=backend: b == "callback")
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))  # traced anew
    text = step.lower(grads, state, params).as_text()
    assert ("callback" in text) == (backend == "callback")
    out[backend] = step(grads, state, params)[1].layers["w"]
  np.testing.assert_array_equal(out["callback"].index, out["xla"].index)
  np.testing.assert_allclose(out["callback"].codebook, out["xla"].codebook,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wrap", ["bare", "chain", "nnx"])
def test_recluster_clusters_the_params_it_is_given(wrap):
  """After ``recluster`` the codebooks are a k-means fixed point of the
  current params (each kept block at its nearest entry, each entry its
  members' mean), however the state is wrapped: it must not hand the old
  state back."""
  w0 = jax.random.normal(jax.random.key(0), (18, 8))
  tx = sharing.ste_sharing(optax.sgd(0.1), [rules_lib.Rule("w", k=2)], BLOCK,
                           key=jax.random.key(1))
  if wrap == "chain":
    tx = optax.chain(optax.clip_by_global_norm(1.0), tx)
  state = tx.init({"w": w0})
  if wrap == "nnx":
    state = jax.tree_util.tree_map(nnx.OptArray, state)
  w1 = w0 + 3.0 * jax.random.normal(jax.random.key(2), w0.shape)
  new = sharing.find_state(sharing.recluster({"w": w1}, state,
                                             jax.random.key(3)))
  layer = new.layers["w"]
  x = np.asarray(blockops.kernel_to_ous(w1, layer.plan)).reshape(2, 4, -1)
  codebook = np.asarray(layer.codebook).reshape(2, 2, -1)
  index = np.asarray(layer.index)
  for r in range(2):
    dist = ((x[r, :, None] - codebook[r, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(index[r], dist.argmin(-1))
    for j in set(index[r].tolist()):
      np.testing.assert_allclose(codebook[r, j], x[r, index[r] == j].mean(0),
                                 rtol=1e-5, atol=1e-5)


def test_distance_loop_projects_to_k_blocks():
  params, apply = _frontend("linen")
  data = (jax.random.normal(jax.random.key(1), (32, 6, 6, 2)),
          jax.random.normal(jax.random.key(2), (32, 4)))
  key = jax.random.key(3)
  inner, ctx = _optimizer("adam")
  with ctx:
    tx = optax.chain(optax.clip_by_global_norm(10.0),
                     sharing.distance_sharing(
                         inner, RULES, BLOCK, key=key,
                         lam=optax.linear_schedule(0.0, 1.0, 6),
                         recluster_every=3))
    params, state = _train(tx, params, apply, 6, data)
  before = sharing.distance_loss(params, state)
  state = sharing.recluster(params, state, key)
  assert float(sharing.distance_loss(params, state)) < float(before)
  params = sharing.project(params, state)
  assert float(sharing.distance_loss(params, state)) == 0.0
  comp = finalize.to_compressed(params, rules=RULES, hw=BLOCK)
  from_state = finalize.to_compressed(params, state)
  for p, layer in comp.items():
    np.testing.assert_array_equal(layer.to_kernel(),
                                  from_state[p].to_kernel())
    if p != "fc2/kernel":
      assert layer.stored_per_row_block().max() <= 2
  exported = pruning.map_planned(lambda p, w: comp[p].to_kernel(), params,
                                 comp)
  np.testing.assert_array_equal(apply(exported, data[0]),
                                apply(params, data[0]))
  with pytest.raises(ValueError, match="project"):
    finalize.to_compressed(_frontend("linen")[0], rules=RULES, hw=BLOCK)


_FMNIST = "/usr/share/datasets/fashion-mnist"


def _fashion_mnist(num_train, num_test):
  """A subset of Fashion-MNIST from the Debian IDX files, else synthetic."""
  import gzip  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  def read(name, offset, count, size):
    with gzip.open(os.path.join(_FMNIST, name)) as f:
      data = f.read(offset + count * size)
    return np.frombuffer(data, np.uint8, offset=offset)

  if os.path.exists(os.path.join(_FMNIST, "t10k-labels-idx1-ubyte.gz")):
    out = []
    for split, n in (("train", num_train), ("t10k", num_test)):
      x = read(f"{split}-images-idx3-ubyte.gz", 16, n, 784)
      y = read(f"{split}-labels-idx1-ubyte.gz", 8, n, 1)
      out.append((x.reshape(n, 28, 28, 1).astype(np.float32) / 255.0,
                  y.astype(np.int32)))
    return out, "fashion-mnist"
  # Synthetic: 10 fixed random templates plus noise (learnable, not trivial).
  rng = np.random.default_rng(0)
  templates = rng.normal(size=(10, 28, 28, 1)).astype(np.float32)
  out = []
  for n in (num_train, num_test):
    y = rng.integers(0, 10, n).astype(np.int32)
    x = templates[y] + 2.0 * rng.normal(size=(n, 28, 28, 1)).astype(
        np.float32)
    out.append((x, y))
  return out, "synthetic"


class _SmallCnn(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.max_pool(nn.relu(nn.Conv(16, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


# The shared model's test accuracy must be within this of the float model's.
ACCURACY_MARGIN = 0.04


CNN_RULES = [rules_lib.Rule("Conv_0"), rules_lib.Rule("Dense_1"),
             rules_lib.Rule("Conv_1", k=2, sparsity=0.25),
             rules_lib.Rule("Dense_0", k=4, sparsity=0.5)]


def _cnn_setup(float_steps=200, batch=64):
  """Data, a float-trained small CNN, ``train`` and ``accuracy``."""
  ((x_train, y_train), (x_test, y_test)), source = _fashion_mnist(4096, 1024)
  model = _SmallCnn()
  params = model.init(jax.random.key(0), x_train[:1])["params"]

  def train(tx, params, steps):
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
      def loss(p):
        logits = model.apply({"params": sharing.training_params(p, state)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                               y).mean()
      grads = jax.grad(loss)(params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    for i in range(steps):
      lo = (i * batch) % x_train.shape[0]
      params, state = step(params, state, x_train[lo:lo + batch],
                           y_train[lo:lo + batch])
    return params, state

  @jax.jit
  def accuracy(params):
    logits = model.apply({"params": params}, x_test)
    return jnp.mean((jnp.argmax(logits, -1) == y_test).astype(jnp.float32))

  # The float model (ou_pruning with only an excluding rule is plain sgd; it
  # keeps one code path for the training loop).
  float_params, _ = train(
      pruning.ou_pruning(optax.sgd(0.05, momentum=0.9),
                         [rules_lib.Rule("Conv_0")], BLOCK),
      params, float_steps)
  return source, float_params, train, accuracy


def _finetune_and_export(params, train, accuracy):
  ft = finetune.centroid_finetune(optax.sgd(0.01, momentum=0.9), CNN_RULES,
                                  BLOCK)
  params, state = train(ft, params, 30)
  comp = finalize.to_compressed(params, state)
  exported = pruning.map_planned(lambda p, w: comp[p].to_kernel(), params,
                                 comp)
  assert comp["Conv_1/kernel"].stored_per_row_block().max() <= 2
  assert comp["Dense_0/kernel"].stored_per_row_block().max() <= 4
  assert int(jnp.sum(comp["Dense_0/kernel"].index < 0)) == 88 * 32 // 2
  return float(accuracy(exported))


def test_small_cnn_recovers_accuracy():
  """Float training, then STE sharing + pruning, then the centroid
  fine-tune: Conv_1 at k=2 of 8 groups (4x) with 25% of its OU blocks
  pruned, Dense_0 at k=4 of 32 (8x) with 50% pruned; first and last layers
  left out."""
  source, float_params, train, accuracy = _cnn_setup()
  float_acc = float(accuracy(float_params))
  ste = sharing.ste_sharing(
      optax.sgd(0.05, momentum=0.9), CNN_RULES, BLOCK, key=jax.random.key(1),
      recluster_every=40, prune=pruning.PruneSchedule(begin=0, end=40,
                                                      every=20))
  params, state = train(ste, float_params, 100)
  params = sharing.project(params, state)
  ste_acc = float(accuracy(params))
  shared_acc = _finetune_and_export(params, train, accuracy)
  print(f"{source}: float {float_acc:.3f}, STE {ste_acc:.3f}, "
        f"fine-tuned {shared_acc:.3f}")
  assert float_acc > (0.7 if source == "fashion-mnist" else 0.5)
  assert shared_acc >= float_acc - ACCURACY_MARGIN


@pytest.mark.slow
def test_small_cnn_paper_loop_recovers_accuracy():
  """The paper's loop on the same CNN: lambda ramps up, re-clustering every
  40 steps, then the hard projection and the centroid fine-tune."""
  source, float_params, train, accuracy = _cnn_setup()
  float_acc = float(accuracy(float_params))
  key = jax.random.key(1)
  tx = sharing.distance_sharing(
      optax.sgd(0.05, momentum=0.9), CNN_RULES, BLOCK, key=key,
      lam=optax.linear_schedule(1e-3, 0.2, 120), recluster_every=40,
      prune=pruning.PruneSchedule(begin=0, end=40, every=20))
  params, state = train(tx, float_params, 150)
  state = sharing.recluster(params, state, key)
  params = sharing.project(params, state)
  projected_acc = float(accuracy(params))
  shared_acc = _finetune_and_export(params, train, accuracy)
  print(f"{source}: float {float_acc:.3f}, projected {projected_acc:.3f}, "
        f"fine-tuned {shared_acc:.3f}")
  assert shared_acc >= float_acc - ACCURACY_MARGIN


def test_nnx_optimizer_state_is_accepted():
  # nnx.Optimizer wraps every leaf of its opt_state in an nnx.OptArray; the
  # functions that read an rsjax state take it as it is.

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.fc = nnx.Linear(18, 16, rngs=rngs)

    def __call__(self, x):
      return self.fc(x)

  model = Net(nnx.Rngs(0))
  hw = rsjax.HardwareSpec()
  tx = rsjax.ste_sharing(optax.sgd(0.1), [rsjax.Rule("kernel$", k=2)], hw,
                         key=jax.random.key(0))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.ones((4, 18))
  opt.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  shared = rsjax.training_params(params, opt.opt_state)
  pure = getattr(nnx, "as_pure", None) or nnx.pure  # renamed in flax 0.12
  want = rsjax.training_params(params, pure(opt.opt_state))
  np.testing.assert_array_equal(np.asarray(shared["fc"]["kernel"]),
                                np.asarray(want["fc"]["kernel"]))
  layers = rsjax.to_compressed(params, opt.opt_state)
  assert layers["fc/kernel"].stored_per_row_block().max() <= 2
