"""A run's folder: its config, its stage state, its checkpoints and files,
laid out as docs/experiments.md shows (on several processes:
docs/multihost.md, "What is written where")."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from rsjax._src import model_file

from experiments import distributed

log = logging.getLogger(__name__)

MODEL_FILE = "compressed_model.rsjax.npz"
OWNED = ("config.json", "state.json", "log.txt", "checkpoints",
         "results.json", "adc_sweep.csv", "accuracy_vs_adc_bits.png",
         "layer_compression.png", MODEL_FILE)


class WorkdirConflictError(RuntimeError):
  """The workdir holds a run of another config."""


def write_file(path: str, payload: bytes | str) -> None:
  """Writes a file so readers see the old or the new one, never half.

  On a multi-process run only process 0 writes; the others computed the
  same payload and skip it.
  """
  if not distributed.is_primary():
    return
  data = payload.encode() if isinstance(payload, str) else payload
  # The library's writer (its model files are written the same way).
  model_file.atomic_write(path, lambda f: f.write(data))


def jsonable(x):
  """NumPy/JAX values to JSON; ``inf`` as the string ``'inf'``, NaN null."""
  if isinstance(x, Mapping):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return jsonable(np.asarray(x).tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
  return x


def write_json(path: str, obj) -> None:
  write_file(path, json.dumps(jsonable(obj), indent=2) + "\n")


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON values (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict()))


def _config_diff(a, b, prefix="") -> list[str]:
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _config_diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
  return out[:10]


def claim(workdir: str, config: ml_collections.ConfigDict,
          overwrite: bool) -> None:
  """Creates the workdir, or checks it holds a run of this same config.

  Raises:
    WorkdirConflictError: it holds another config's run and not
      ``overwrite``.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  current = config_json(config)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    if stored != current and not overwrite:
      raise WorkdirConflictError(
          f"{workdir} holds a run of another config (differences: "
          f"{_config_diff(stored, current)}). Use another --workdir, or "
          "pass --overwrite to delete that run.")
    if overwrite and distributed.is_primary():
      log.info("--overwrite: deleting the previous run in %s", workdir)
      for name in OWNED:
        p = os.path.join(workdir, name)
        if os.path.isdir(p):
          shutil.rmtree(p)
        elif os.path.exists(p):
          os.remove(p)
  write_json(path, current)
  # The others read the workdir only once process 0 has cleared and
  # claimed it; a process that then cannot see config.json is on another
  # filesystem.
  distributed.barrier("workdir_prepared")
  if not os.path.exists(path):
    raise WorkdirConflictError(
        f"process {jax.process_index()} cannot see {path}, which process 0 "
        "wrote: on a multi-process run --workdir must be one folder every "
        "process shares (a network filesystem or a bucket)")


def load_state(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, "state.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"stages": {}}


def save_tree(path: str, tree) -> None:
  """An orbax checkpoint of ``tree``.

  Every process calls it (orbax coordinates who writes what); it returns
  once the checkpoint is complete for all of them.
  """
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), tree, force=True)
    ckptr.wait_until_finished()
  distributed.barrier(f"saved:{os.path.abspath(path)}")


def load_tree(path: str):
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(os.path.abspath(path))
  return jax.tree_util.tree_map(jnp.asarray, tree)
