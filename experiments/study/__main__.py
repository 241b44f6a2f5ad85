"""``python -m experiments.study``: every point and sweep of the study that
is not finished, then RESULTS.md (:func:`experiments.study.grid.main` with
``--report`` on; the same flags)."""

from experiments.study import grid

if __name__ == "__main__":
  grid.main(report=True)
