"""Runs the experiment pipeline.

  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=/tmp/rsjax_default [--config.train.steps=500] [--overwrite]

On several processes or hosts, the same command on each: docs/multihost.md.

Only flags are parsed here; the logic is in :mod:`experiments.pipeline`.
"""

import logging as pylogging

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow_datasets as tfds

from experiments import data
from experiments import distributed
from experiments import pipeline
from experiments import results as results_lib
from experiments import train
from experiments import workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and "
                               "results go.", required=True)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete a previous run of another config in workdir.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", distributed.MODES,
    "Join a multi-process run with jax.distributed.initialize: 'auto' when "
    "the flags below (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
    "$JAX_PROCESS_ID) are set or SLURM/Open MPI/a multi-host TPU started "
    "several processes; 'on' always (JAX detects the cluster); 'off' never.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "How many processes take part.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, num_processes).",
    lower_bound=0)
# lock_config: a config key that does not exist is an error, not a new field.
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/default.py", "Experiment config file.",
    lock_config=True)


class _QuietLibraries(pylogging.Filter):
  """Drops INFO records of orbax and TFDS, which log every file they touch."""

  def filter(self, record):
    if record.levelno >= pylogging.WARNING:
      return True
    return not any(f"/{lib}/" in record.pathname
                   for lib in ("orbax", "tensorflow_datasets"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  tfds.disable_progress_bar()
  try:
    distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value,
                           _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  logging.info("JAX devices: %s", jax.devices())
  try:
    results = pipeline.run(_CONFIG.value, _WORKDIR.value,
                           overwrite=_OVERWRITE.value)
  except (ValueError, workdir.WorkdirConflictError,
          data.DatasetNotFoundError, train.NanLossError) as e:
    # Expected user-facing failures: the message says what to do, a
    # traceback would only bury it.
    raise SystemExit(f"error: {e}") from None
  if distributed.is_primary():
    print(results_lib.summary_table(results))


if __name__ == "__main__":
  app.run(main)
