"""Several processes (hosts) through JAX's own multi-process runtime:
joining them, and what a run needs inside them (who writes, barriers, sums).
One process is the special case: nothing here changes it. See
docs/multihost.md."""

from __future__ import annotations

import logging
import os
from typing import Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"${name} must be an integer, got {value!r}") from None


def launched_several(environ: Mapping[str, str]) -> bool:
  """Whether a launcher JAX reads the settings from started several
  processes (the launchers of ``--distributed=auto``, docs/multihost.md)."""
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
           "SLURM_LOCALID")
  return ((all(v in environ for v in slurm)
           and (_env_int(environ, "SLURM_NTASKS") or 1) > 1)
          or ("OMPI_MCA_orte_hnp_uri" in environ
              and (_env_int(environ, "OMPI_COMM_WORLD_SIZE") or 1) > 1)
          or "," in (environ.get("TPU_PROCESS_ADDRESSES")
                     or environ.get("TPU_WORKER_HOSTNAMES") or ""))


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               environ: Mapping[str, str] | None = None) -> bool:
  """Joins the multi-process run this process is part of, if any.

  Call it once, before anything touches a JAX device. ``mode`` is
  ``--distributed`` and the settings its launch flags, each else its
  variable in ``environ`` (default ``os.environ``): see docs/multihost.md.

  Returns:
    Whether :func:`jax.distributed.initialize` was called.

  Raises:
    ValueError: a malformed or missing setting (JAX's message, naming it,
      with the flags and variables that give it).
  """
  if mode not in MODES:
    raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
  environ = os.environ if environ is None else environ
  coordinator_address = (coordinator_address
                         or environ.get("JAX_COORDINATOR_ADDRESS") or None)
  if num_processes is None:
    num_processes = _env_int(environ, "JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int(environ, "JAX_PROCESS_ID")
  explicit = (coordinator_address, num_processes, process_id) != (None,) * 3
  if mode == "off" or mode == "auto" and (
      num_processes == 1 if explicit else not launched_several(environ)):
    return False
  host, _, port = (coordinator_address or "").rpartition(":")
  if coordinator_address and not (host and port.isdigit()):
    raise ValueError("coordinator_address must be HOST:PORT, got "
                     f"{coordinator_address!r}")
  try:
    jax.distributed.initialize(coordinator_address, num_processes,
                               process_id)
  except ValueError as e:
    raise ValueError(
        f"{e} (flags --coordinator_address/--num_processes/--process_id or "
        "$JAX_COORDINATOR_ADDRESS/$JAX_NUM_PROCESSES/$JAX_PROCESS_ID)"
    ) from e
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
