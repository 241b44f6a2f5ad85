"""The results grid: its groups select what their docs say, and every
hardware-aware point is a recipe the pipeline accepts."""

import pytest

from experiments import pipeline
from experiments.study import grid

GRID = "experiments/study/fashion_mnist_grid.py"


@pytest.fixture(scope="module")
def results_grid():
  return grid.load_grid(GRID)


def test_cpu_hwaware_group_pulls_in_no_accelerator_model(results_grid):
  # `--group=hwaware` is documented as the MLP and LeNet-5 runs: a VGG-8
  # point there would make a CPU user train VGG-8's baseline for days.
  names = [p.name for p in grid.select(results_grid, group="hwaware").points]
  assert names and all(n.split("_")[0] in ("mlp", "lenet5") for n in names)


def test_vgg8_hwaware_points_are_the_69x_recipe_plus_hwaware(results_grid):
  by_name = {p.name: p for p in results_grid.points}
  ref = by_name["vgg8_bn_lk_ste_p0.5_k4"]
  selected = grid.select(results_grid, group="hwaware_gpu").points
  points = [p for p in selected if p.group == "hwaware_gpu"]
  assert sorted(p.name for p in points) == sorted(
      f"vgg8_bn_lk_hw{b}_{m}_ste_p0.5_k4" for b in (3, 4)
      for m in ("clip", "calibrated"))
  assert [p.name for p in selected if p not in points] == ["vgg8_base"]
  for p in points:
    assert p.base == "vgg8_base"
    assert p.overrides["recipe.rules"] == ref.overrides["recipe.rules"]
    assert p.overrides["recipe.stages"] == (
        *ref.overrides["recipe.stages"], "hwaware")
    recipe = pipeline.check(p.load_config())
    assert "hwaware" in recipe.stages


def test_every_hwaware_point_passes_the_pipeline_check(results_grid):
  points = [p for p in results_grid.points
            if p.group in ("hwaware", "hwaware_gpu")]
  assert len(points) >= 18
  for p in points:
    pipeline.check(p.load_config())
