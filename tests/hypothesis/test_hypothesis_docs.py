"""docs/hypothesis.md: its code blocks, and the failure it shows.

tests/docs/test_docs_examples.py runs every Python block of the docs (these included)
and checks that they pass; here, each block names its file, and the first recipe with
its planted bug fails and shrinks as the page shows.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy  # noqa: F401  (in-process inner runs cannot load it a second time)
import pytest

import pytest_gradcheck.strategies  # noqa: F401  (likewise)

DOC = Path(__file__).resolve().parents[2] / "docs" / "hypothesis.md"


def code_blocks() -> dict[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    files: dict[str, str] = {}
    for block in blocks:
        first = block.splitlines()[0]
        name = re.fullmatch(r"# (\w+\.py)", first)
        assert name, f"a python block of {DOC.name} must start with '# file.py': {first!r}"
        files[name.group(1)] = block
    return files


def test_every_block_names_its_file() -> None:
    files = code_blocks()
    assert "conftest.py" in files
    assert len([f for f in files if f.startswith("test_")]) >= 4


def test_the_planted_bug_of_the_first_recipe_is_shrunk_as_shown(pytester: pytest.Pytester) -> None:
    source = code_blocks()["test_affine_shapes.py"]
    buggy = source.replace("dout.sum(axis=0)", "dout[0]").replace(
        "deadline=None)",
        "deadline=None, database=None, derandomize=True, "
        "phases=[p for p in Phase if p is not Phase.explain])",
    )  # no explain phase: it only adds comments, at a cost of seconds
    buggy = "from hypothesis import Phase\n" + buggy
    assert buggy.count("dout[0]") == 1 and buggy.count("phases=") == 1
    pytester.makepyfile(test_affine_shapes=buggy)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    flat = re.sub(r"\s+", "", re.sub(r"#[^\n]*", "", out))
    assert "batch_in=(2,1" in flat and "out_features=1" in flat, out
    assert "block 'args[2]' (shape (1,), float64): tier wrong" in out
