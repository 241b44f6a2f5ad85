"""Runs the experiment pipeline.

  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=/tmp/rsjax_default [--config.train.steps=500] [--overwrite]

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
from experiments import pipeline
from experiments import report
from experiments import train
from experiments import workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and "
                               "results go.", required=True)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete a previous run of another config in workdir.")
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
  logging.info("JAX devices: %s", jax.devices())
  try:
    results = pipeline.run(_CONFIG.value, _WORKDIR.value,
                           overwrite=_OVERWRITE.value)
  except (ValueError, workdir.WorkdirConflictError,
          data.DatasetNotFoundError, train.NanLossError) as e:
    # Expected user-facing failures: the message says what to do, a
    # traceback would only bury it.
    raise SystemExit(f"error: {e}") from None
  print(report.summary_table(results))


if __name__ == "__main__":
  app.run(main)
