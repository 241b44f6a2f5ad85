"""The README's Python examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})  # pylint: disable=exec-used
