"""Several processes (hosts) through JAX's own multi-process runtime.

The pipeline runs the same program on every process: a global ``('data',)``
mesh over ``jax.devices()`` (all processes' devices), each process reading
its own rows of every global batch, and process 0 alone writing the
workdir's files (orbax checkpoints are written by all, coordinated by
orbax). One process is the special case: nothing here changes it.

Launch: :func:`launch_from_env` reads the explicit settings (flags, else
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``),
:func:`initialize` decides whether to call :func:`jax.distributed.initialize`
and does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a multi-process run.

  Attributes:
    mode: ``'auto'`` initializes when explicit settings are given or a
      multi-process launcher is detected (SLURM ``srun`` with several tasks,
      Open MPI ``mpirun`` with several ranks, a multi-host Cloud TPU on
      GKE); ``'on'`` always calls :func:`jax.distributed.initialize` (JAX
      fills what is unset from its cluster auto-detection, e.g. on a Cloud
      TPU VM pod slice); ``'off'`` never (one process).
    coordinator_address: ``HOST:PORT`` of process 0's coordinator.
    num_processes: how many processes take part.
    process_id: this process's index, ``0 <= process_id < num_processes``.
  """

  mode: str = "auto"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"distributed mode must be one of {MODES}, got "
                       f"{self.mode!r}")
    if self.num_processes is not None and self.num_processes < 1:
      raise ValueError(
          f"num_processes must be >= 1, got {self.num_processes}")
    if self.process_id is not None and (
        self.process_id < 0 or (self.num_processes is not None and
                                self.process_id >= self.num_processes)):
      raise ValueError(
          f"process_id must be in [0, num_processes={self.num_processes}), "
          f"got {self.process_id}")
    if (self.coordinator_address is not None
        and not _is_host_port(self.coordinator_address)):
      raise ValueError("coordinator_address must be HOST:PORT, got "
                       f"{self.coordinator_address!r}")

  @property
  def explicit(self) -> bool:
    return any(v is not None for v in (self.coordinator_address,
                                       self.num_processes, self.process_id))


def _is_host_port(address: str) -> bool:
  host, sep, port = address.rpartition(":")
  return bool(sep and host and port.isdigit())


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"${name} must be an integer, got {value!r}") from None


def launch_from_env(mode: str = "auto", coordinator_address: str | None = None,
                    num_processes: int | None = None,
                    process_id: int | None = None,
                    environ: Mapping[str, str] | None = None) -> Launch:
  """A :class:`Launch` from explicit values, else JAX's environment variables.

  Args:
    mode: see :class:`Launch`.
    coordinator_address: else ``$JAX_COORDINATOR_ADDRESS``.
    num_processes: else ``$JAX_NUM_PROCESSES``.
    process_id: else ``$JAX_PROCESS_ID``.
    environ: the environment (default ``os.environ``).

  Raises:
    ValueError: a malformed value (naming the flag or variable).
  """
  environ = os.environ if environ is None else environ
  return Launch(
      mode=mode,
      coordinator_address=(coordinator_address
                           or environ.get("JAX_COORDINATOR_ADDRESS") or None),
      num_processes=(num_processes if num_processes is not None
                     else _env_int(environ, "JAX_NUM_PROCESSES")),
      process_id=(process_id if process_id is not None
                  else _env_int(environ, "JAX_PROCESS_ID")))


def detected_launcher(environ: Mapping[str, str] | None = None) -> str | None:
  """The multi-process launcher this process runs under, or None.

  Only launchers that started more than one process count: a single SLURM
  task or ``mpirun -n 1`` is a one-process run.
  """
  environ = os.environ if environ is None else environ
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
           "SLURM_PROCID", "SLURM_LOCALID")
  if all(v in environ for v in slurm) and (
      _env_int(environ, "SLURM_NTASKS") or 1) > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in environ and (
      _env_int(environ, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return "openmpi"
  hosts = (environ.get("TPU_PROCESS_ADDRESSES")
           or environ.get("TPU_WORKER_HOSTNAMES") or "")
  if "," in hosts:
    return "cloud_tpu"
  return None


def should_initialize(launch: Launch,
                      environ: Mapping[str, str] | None = None) -> bool:
  """Whether :func:`initialize` calls :func:`jax.distributed.initialize`."""
  if launch.mode == "off":
    return False
  if launch.mode == "on":
    return True
  if launch.explicit:
    return launch.num_processes != 1
  return detected_launcher(environ) is not None


def initialize(launch: Launch, environ: Mapping[str, str] | None = None
               ) -> bool:
  """Joins the multi-process run ``launch`` describes, if any.

  Call it once, before anything touches a JAX device.

  Returns:
    Whether :func:`jax.distributed.initialize` was called.

  Raises:
    ValueError: explicit settings that are incomplete (naming what is
      missing), for a run outside any auto-detected launcher.
  """
  if not should_initialize(launch, environ):
    return False
  if launch.mode == "auto" and launch.explicit and detected_launcher(
      environ) is None:
    missing = [name for name, v in (
        ("coordinator_address", launch.coordinator_address),
        ("num_processes", launch.num_processes),
        ("process_id", launch.process_id)) if v is None]
    if missing:
      raise ValueError(
          f"a multi-process launch needs coordinator_address, num_processes "
          f"and process_id; {', '.join(missing)} not given (flags "
          "--coordinator_address/--num_processes/--process_id or $JAX_"
          "COORDINATOR_ADDRESS/$JAX_NUM_PROCESSES/$JAX_PROCESS_ID)")
  jax.distributed.initialize(
      coordinator_address=launch.coordinator_address,
      num_processes=launch.num_processes, process_id=launch.process_id)
  log.info("process %d of %d; %d local and %d global devices",
           jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  return True


# --- Inside a run ------------------------------------------------------------


def is_primary() -> bool:
  """Whether this process writes the workdir's (non-checkpoint) files."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reached the barrier ``name`` (no-op alone)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> slice:
  """The rows of a global batch that this process's devices hold.

  Raises:
    ValueError: the rows are not one contiguous block (a mesh whose
      devices interleave processes) or ``batch_size`` does not divide.
  """
  index_map = sharding.addressable_devices_indices_map((batch_size,))
  starts = sorted({idx[0].indices(batch_size)[:2] for idx in
                   index_map.values()})
  lo, hi = starts[0][0], starts[0][1]
  for start, stop in starts[1:]:
    if start != hi:
      raise ValueError(
          f"process {jax.process_index()} holds rows {starts} of the batch, "
          "not one contiguous block; order the mesh's devices by process")
    hi = stop
  return slice(lo, hi)


def global_batch(local: Mapping[str, np.ndarray],
                 sharding: jax.sharding.Sharding, batch_size: int
                 ) -> dict[str, jax.Array]:
  """Global arrays of ``batch_size`` rows from this process's rows.

  ``local`` holds the :func:`process_rows` of the global batch.
  """
  out = {}
  for k, v in local.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(
        sharding, v, (batch_size, *v.shape[1:]))
  return out


def to_host(tree) -> Any:
  """NumPy copies of a pytree of (possibly multi-process) arrays.

  Fully replicated arrays are read from a local copy; arrays sharded over
  other processes' devices are gathered.
  """
  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree_util.tree_map(one, tree)


def sum_over_processes(values) -> np.ndarray:
  """The element-wise float64 sum of ``values`` over processes.

  The values travel as float32 (JAX's default width): counts are exact
  below 2**24 per process.
  """
  values = np.asarray(values, np.float64)
  if jax.process_count() == 1:
    return values
  gathered = multihost_utils.process_allgather(values.astype(np.float32))
  return np.asarray(gathered, np.float64).sum(0)
