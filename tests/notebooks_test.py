"""The notebooks in notebooks/ are tests: each runs top to bottom on the CPU.

Each notebook's parameters cell reads ``RSJAX_NOTEBOOK_QUICK=1`` (set here)
and shortens its run (few training steps, few test images). A notebook that
needs Fashion-MNIST gets a small real subset built by the experiments
fixture through ``TFDS_DATA_DIR``, and is skipped where Debian's
``dataset-fashion-mnist`` is not installed. The kernel finds ``experiments``
(not installed into site-packages) through ``PYTHONPATH``, as a notebook
does after cloning the repository; a notebook that needs CIFAR-10 and finds
it not prepared runs on ``tfds.testing.mock_data``. Notebooks are committed
without outputs and with an "Open in Colab" badge.
"""

import os
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from experiments_fixtures import fmnist_data_dir  # noqa: F401,E402

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Wall-clock budget of one notebook's quick run, kernel start included: a
# guard against a hang, not a speed target. Each needs about a minute of CPU
# time; a machine shared with other jobs takes several times that in wall time.
NOTEBOOK_TIMEOUT_S = 600
COLAB_URL = ("https://colab.research.google.com/github/OWNER/rsjax/blob/"
             "main/notebooks/")


def _ids(paths):
  return [p.stem for p in paths]


def test_there_are_notebooks():
  assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb",
                                         "emulator_tour.ipynb",
                                         "paper_reproduction.ipynb"}


def _failed_cell(nb):
  """Index and cell of the first cell with an error output, or None."""
  for i, cell in enumerate(nb.cells):
    for out in cell.get("outputs", []):
      if out.get("output_type") == "error":
        return i, cell, out
  return None


def run_notebook(path, env, cwd, timeout_s=NOTEBOOK_TIMEOUT_S):
  """Executes a notebook in a fresh kernel; fails with the failing cell.

  Args:
    path: the ``.ipynb`` file.
    env: environment variables set for the kernel.
    cwd: the kernel's working directory (where the notebook writes files).
    timeout_s: the whole notebook's budget (each cell gets what is left).

  Returns:
    The executed notebook and the seconds it took.
  """
  nb = nbformat.read(str(path), as_version=4)
  deadline = time.monotonic() + timeout_s
  client = nbclient.NotebookClient(
      nb, kernel_name="python3", allow_errors=False,
      timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
      resources={"metadata": {"path": str(cwd)}})
  start = time.monotonic()
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    client.execute()
  except (nbclient.exceptions.CellExecutionError,
          nbclient.exceptions.CellTimeoutError) as e:
    failed = _failed_cell(nb)
    if failed is None:
      pytest.fail(f"{path.name} timed out or died after "
                  f"{time.monotonic() - start:.0f} s: {e}", pytrace=False)
    i, cell, out = failed
    pytest.fail(
        f"{path.name}: cell {i} raised {out['ename']}: {out['evalue']}\n"
        f"--- cell source ---\n{cell.source}\n--- error ---\n"
        f"{chr(10).join(out.get('traceback', []))}", pytrace=False)
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb, time.monotonic() - start


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_quick_on_cpu(path, request, tmp_path):
  env = {"RSJAX_NOTEBOOK_QUICK": "1", "JAX_PLATFORMS": "cpu",
         "MPLBACKEND": "module://matplotlib_inline.backend_inline",
         "PYTHONPATH": os.pathsep.join(
             p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
  if "fashion" in path.read_text().lower():
    env["TFDS_DATA_DIR"] = request.getfixturevalue("fmnist_data_dir")
  nb, seconds = run_notebook(path, env, tmp_path)
  print(f"{path.name}: {seconds:.1f} s")
  assert all(c.get("outputs") is not None for c in nb.cells
             if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_clean(path):
  nb = nbformat.read(str(path), as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  and (c.outputs or c.execution_count is not None)]
  assert not with_outputs, (f"{path.name}: cells {with_outputs} have "
                            "outputs; commit notebooks without outputs")
  assert nb.cells[0].cell_type == "markdown"
  assert COLAB_URL + path.name in nb.cells[0].source, (
      f"{path.name}: the first cell needs the Open in Colab badge")
  assert "RSJAX_NOTEBOOK_QUICK" in code[0].source, (
      f"{path.name}: the first code cell must be the parameters cell")


def test_failing_notebook_names_the_cell(tmp_path):
  nb = nbformat.v4.new_notebook(cells=[
      nbformat.v4.new_code_cell("x = 1"),
      nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")])
  path = tmp_path / "broken.ipynb"
  nbformat.write(nb, str(path))
  with pytest.raises(pytest.fail.Exception,
                     match=r"(?s)cell 1 raised ValueError.*broken on purpose"
                     r".*raise ValueError"):
    run_notebook(path, {}, tmp_path, timeout_s=60)
