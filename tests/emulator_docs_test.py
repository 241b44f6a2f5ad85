"""The Python examples of docs/emulator.md, hardware.md and devices.md run."""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
NAMES = ("emulator.md", "hardware.md", "devices.md")
BLOCKS = [(name, block) for name in NAMES
          for block in re.findall(r"```python\n(.*?)```",
                                  (DOCS / name).read_text(), re.S)]


def test_there_are_examples():
  assert {name for name, _ in BLOCKS} == set(NAMES)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  name, block = BLOCKS[index]
  exec(compile(block, f"docs/{name} block {index}", "exec"), {})  # pylint: disable=exec-used
