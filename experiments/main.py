"""Runs the experiment pipeline.

  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=/tmp/rsjax_default [--config.train.steps=500] [--overwrite]

Only flags are parsed here; the logic is in :mod:`experiments.pipeline`.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from experiments import pipeline

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and "
                               "results go.", required=True)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete a previous run of another config in workdir.")
# lock_config: a config key that does not exist is an error, not a new field.
_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/default.py", "Experiment config file.",
    lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.info("JAX devices: %s", jax.devices())
  results = pipeline.run(_CONFIG.value, _WORKDIR.value,
                         overwrite=_OVERWRITE.value)
  print(pipeline.summary_table(results))


if __name__ == "__main__":
  app.run(main)
