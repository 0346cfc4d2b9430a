"""Every ```python block of docs/**/*.md and README.md runs here, so the docs cannot rot.

A block is a script or a test file:

- a *script* is executed in a fresh namespace, with no pytest test around it (the
  checks it runs use the defaults, whatever options this test session was given);
- a *test file* (a block that defines ``def test_...`` at the top level) is written
  to a temporary directory and run by pytest, in this process, the plugin loaded as
  usual.

HTML comments on the lines just above a fence (blank lines between are allowed)
annotate the block. They render as nothing on the site.

- ``<!-- fails: GradcheckError -->``: the script raises that exception (a name from
  builtins or `pytest_gradcheck`); a test file has only failing tests, failing on it.
- ``<!-- outcome: passed=1 failed=1 -->``: a test file's exact outcome counts.
- ``<!-- continue -->``: the script runs after the page's previous python block, in
  its namespace (to build on an earlier example without repeating it).
- ``<!-- file: test_layers.py -->``: a test file's name (default ``test_example.py``).
- ``<!-- args: --gradcheck-seed=3 -->``: command-line arguments for a test file's run.
- ``<!-- requires: cuda -->`` / ``<!-- requires: jax-gpu -->``: skipped without a CUDA
  GPU for torch / a GPU for JAX.
- ``<!-- skip: reason -->``: not run at all. Keep these rare; say why.
- ``<!-- output -->`` above a ```text block: the block is what the page's previous
  python block prints (a script's standard output, then the message of the exception
  it is expected to raise; for a test file, a part of pytest's output), compared line
  by line with runs of whitespace collapsed (an empty block matches only an empty
  output). ``GRADCHECK_DOCS_UPDATE=1 pytest tests/docs`` rewrites a script's ```text
  block with what it prints now: each rewrite re-reads the page and finds its block
  again, so a page with several stale blocks is fixed in one run. Run it without
  xdist (a worker refuses), then read the diff.

Anything else in such a comment is an error, so a misspelt annotation cannot make a
block silently pass.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import re
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pytest_gradcheck

ROOT = Path(__file__).resolve().parents[2]
#: set to 1 to rewrite the ```text blocks of scripts with what they print now
UPDATE = "GRADCHECK_DOCS_UPDATE"
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^`]*$")
COMMENT = re.compile(r"^\s*<!--\s*(?P<key>[a-z-]+)\s*(?::\s*(?P<value>.*?))?\s*-->\s*$")
KEYS = {"fails", "outcome", "continue", "file", "args", "requires", "skip", "output"}
TEST_DEF = re.compile(r"^(async\s+)?def test_\w*\(", re.MULTILINE)


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    notes: dict[str, str] = field(default_factory=dict)
    end: int = 0  # 1-based line of the closing fence (len(lines) + 1 if it is missing)
    ordinal: int = 0  # position among the page's fenced blocks, from 0
    previous: Block | None = None  # the page's previous python block
    output: Block | None = None  # the ```text block marked <!-- output --> after it

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"

    @property
    def is_test_file(self) -> bool:
        return bool(TEST_DEF.search(self.code))


def parse(page: Path) -> list[Block]:
    """The fenced blocks of a page, with their annotations."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m["indent"], m["fence"], m["lang"].lower()
        notes: dict[str, str] = {}
        j = i - 1
        while j >= 0 and (not lines[j].strip() or COMMENT.match(lines[j])):
            c = COMMENT.match(lines[j])
            if c:
                key = c["key"]
                if key not in KEYS:
                    raise ValueError(f"{page}:{j + 1}: unknown docs-test annotation {key!r}")
                notes[key] = c["value"] or ""
            j -= 1
        end = i + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence[0] * len(fence))
            and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]]
        code = textwrap.dedent("\n".join(body)) + "\n"
        blocks.append(Block(page, i + 1, lang, code, notes, end=end + 1, ordinal=len(blocks)))
        i = end + 1
    python: Block | None = None
    for b in blocks:
        if b.lang in ("python", "py"):
            b.previous = python
            python = b
        elif "output" in b.notes:
            if python is None:
                raise ValueError(f"{b.where}: <!-- output --> with no python block before it")
            python.output = b
        elif b.notes:
            raise ValueError(f"{b.where}: annotations on a non-python block")
    return blocks


def pages() -> list[Path]:
    return [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]


def python_blocks() -> list[Block]:
    return [b for page in pages() for b in parse(page) if b.lang in ("python", "py")]


BLOCKS = python_blocks()


def _exception(name: str) -> type[BaseException]:
    exc = getattr(pytest_gradcheck, name, None) or getattr(builtins, name, None)
    if not (isinstance(exc, type) and issubclass(exc, BaseException)):
        raise ValueError(f"<!-- fails: {name} -->: not in builtins or pytest_gradcheck")
    return exc


def _normalise(text: str) -> list[str]:
    """Lines without blank ones, whitespace runs and ``====`` rules of any width collapsed."""
    lines = (" ".join(line.split()) for line in text.strip().splitlines())
    return [re.sub(r"([=-])\1{3,}", r"\1\1\1", line) for line in lines if line]


def _check_output(block: Block, printed: str) -> None:
    if block.output is None:
        return
    want, got = _normalise(block.output.code), _normalise(printed)
    n = len(want)
    # an empty ```text block matches only an empty output (not everything)
    found = any(got[k : k + n] == want for k in range(len(got) - n + 1)) if want else not got
    if not found and os.environ.get(UPDATE) and not block.is_test_file:
        update_output(block, printed)
        return
    assert found, (
        f"{block.output.where}: the ```text block is not what {block.where} prints.\n"
        f"--- the page says:\n{block.output.code}\n--- it prints:\n{printed}"
    )


def update_output(block: Block, printed: str) -> None:
    """Write what a script printed into its ```text block (GRADCHECK_DOCS_UPDATE=1).

    `block` was parsed when this module was collected; an earlier rewrite of the same
    page may have moved or resized everything after it since. So the page is read and
    parsed again, and the block found by its ordinal among the page's fenced blocks
    (a rewrite changes what is inside a ```text block, never how many blocks there
    are), checked by its code, and its output block replaced between the fences of
    the fresh parse.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        raise RuntimeError(f"{UPDATE}=1 rewrites pages: run it without xdist (-p no:xdist)")
    fresh = parse(block.page)
    now = fresh[block.ordinal] if block.ordinal < len(fresh) else None
    if now is None or now.lang != block.lang or now.code != block.code or now.output is None:
        raise RuntimeError(f"{block.where}: the page changed under the update; run it again")
    output = now.output
    lines = block.page.read_text().splitlines(keepends=True)
    if output.end > len(lines):
        raise RuntimeError(f"{output.where}: the ```text block has no closing fence")
    fence = lines[output.line - 1]
    indent = fence[: len(fence) - len(fence.lstrip())]
    marker = fence.strip()[:3]
    new = [indent + line + "\n" if line else "\n" for line in printed.rstrip().splitlines()]
    if any(line.strip().startswith(marker) for line in new):
        raise RuntimeError(f"{output.where}: the output holds a fence line; not rewritten")
    lines[output.line : output.end - 1] = new  # between the opening and the closing fence
    block.page.write_text("".join(lines))


def _requires(block: Block) -> None:
    need = block.notes.get("requires")
    if need is None:
        return
    if need == "cuda":
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
    elif need == "jax-gpu":
        jax = pytest.importorskip("jax")
        try:
            jax.devices("gpu")
        except RuntimeError:
            pytest.skip("needs a GPU visible to JAX")
    else:
        raise ValueError(f"{block.where}: unknown requirement {need!r}")


def _run_script(block: Block, namespace: dict) -> str:
    """Run a script block (after its chain of <!-- continue --> predecessors)."""
    from pytest_gradcheck._context import CURRENT

    out = io.StringIO()
    fails = block.notes.get("fails")
    code = compile(block.code, block.where, "exec")
    token = CURRENT.set(None)  # run as a plain script: no test, no options of this session
    try:
        with contextlib.redirect_stdout(out):
            if fails is None:
                exec(code, namespace)
            else:
                with pytest.raises(_exception(fails)) as info:
                    exec(code, namespace)
                print(str(info.value))
    finally:
        CURRENT.reset(token)
    return out.getvalue()


class _Outcomes:
    """A plugin for the nested run: counts outcomes as pytest's summary line does."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def _add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(report, "wasxfail"):
            if report.when == "call" or report.skipped:
                self._add("xfailed" if report.skipped else "xpassed")
        elif report.when == "call":
            self._add(report.outcome)
        elif report.failed:
            self._add("errors")
        elif report.skipped:
            self._add("skipped")


def _run_test_file(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test-file block with pytest, in this process, the plugin loaded as usual.

    Not through `pytester`: its `sys.modules` snapshots drop the modules a run imports,
    and torch, JAX and NumPy cannot be imported twice in one process.
    """
    path = tmp_path / block.notes.get("file", "test_example.py")
    path.write_text(block.code)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "path", list(sys.path))
    # a test module of this session with the same basename would clash on import
    monkeypatch.delitem(sys.modules, path.stem, raising=False)
    before = set(sys.modules)
    outcomes, out = _Outcomes(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            args = [str(path), "-p", "no:cacheprovider", "--rootdir", str(tmp_path)]
            pytest.main([*args, *block.notes.get("args", "").split()], [outcomes])
    finally:
        for name in set(sys.modules) - before:  # the test module, imported from tmp_path
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
                del sys.modules[name]
    text, counts = out.getvalue(), outcomes.counts
    if "outcome" in block.notes:
        want = {k: int(v) for k, v in (p.split("=") for p in block.notes["outcome"].split())}
        assert counts == want, f"{block.where}: outcomes {counts}, expected {want}\n{text}"
    elif "fails" in block.notes:
        exc = block.notes["fails"]
        assert set(counts) == {"failed"}, f"{block.where}: outcomes {counts}\n{text}"
        assert exc in text, f"{block.where}: expected the tests to fail with {exc}\n{text}"
    else:
        assert set(counts) == {"passed"}, f"{block.where}: outcomes {counts}\n{text}"
    _check_output(block, text)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_docs_example(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "skip" in block.notes:
        pytest.skip(block.notes["skip"] or "marked <!-- skip --> in the docs")
    _requires(block)
    monkeypatch.chdir(tmp_path)  # a block may write files
    if block.is_test_file:
        if "continue" in block.notes:
            raise ValueError(f"{block.where}: a test file cannot <!-- continue -->")
        _run_test_file(block, tmp_path, monkeypatch)
        return
    chain = [block]
    while "continue" in chain[-1].notes:
        prev = chain[-1].previous
        if prev is None or prev.is_test_file:
            raise ValueError(f"{chain[-1].where}: <!-- continue --> needs a script before it")
        chain.append(prev)
    module = types.ModuleType("__docs__")  # a real module, for dataclasses and pickling
    monkeypatch.setitem(sys.modules, "__docs__", module)
    namespace = module.__dict__
    printed = ""
    for b in reversed(chain):
        printed = _run_script(b, namespace)
    _check_output(block, printed)


def test_docs_have_examples() -> None:
    """The parser finds the examples (a broken fence regex would find none)."""
    assert len(BLOCKS) >= 20
    assert {b.page.name for b in BLOCKS} >= {"index.md", "numpy.md", "README.md"}
    # the README's first example is compared with the report it shows: dropping its
    # <!-- output --> annotation would leave that report unchecked
    readme = [b for b in BLOCKS if b.page.name == "README.md"]
    assert readme[0].is_test_file and readme[0].output is not None
    assert "gradient checks" in readme[0].output.code


UPDATE_PAGE = """\
# A page

```python
print("no output block")
```

```python
print("first", "line")
print("second line")
print("third line")
```

Some prose.

<!-- output -->
```text
old
```

```python
print("one line")
```

More prose.

<!-- output -->
```text
old 1
old 2
old 3
old 4
```

```python
print("up to date")
```

<!-- output -->
```text
up to date
```

```python
print("was empty")
```

<!-- output -->
```text
```

The end.
"""


def test_update_rewrites_every_output_block_of_a_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRADCHECK_DOCS_UPDATE=1 on a page with several output blocks of changing lengths.

    The blocks are parsed once, as at collection; the first rewrite makes its block 2
    lines longer and moves everything below it, the second makes its block 3 lines
    shorter, the last fills an empty one. Each must land between its own fences, the
    rest of the page untouched.
    """
    page = tmp_path / "page.md"
    page.write_text(UPDATE_PAGE)
    scripts = [b for b in parse(page) if b.lang == "python"]
    assert [b.output is not None for b in scripts] == [False, True, True, True, True]
    monkeypatch.setenv(UPDATE, "1")
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    for block in scripts:
        _check_output(block, _run_script(block, {}))
    expected = UPDATE_PAGE.replace(
        "```text\nold\n```", "```text\nfirst line\nsecond line\nthird line\n```"
    ).replace("```text\nold 1\nold 2\nold 3\nold 4\n```", "```text\none line\n```")
    expected = expected.replace("```text\n```", "```text\nwas empty\n```")
    assert page.read_text() == expected
    # a second pass finds every block up to date and changes nothing
    monkeypatch.delenv(UPDATE)
    for block in (b for b in parse(page) if b.lang == "python"):
        _check_output(block, _run_script(block, {}))
    assert page.read_text() == expected


def test_update_refuses_a_page_changed_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    page = tmp_path / "page.md"
    page.write_text('```python\nprint("a")\n```\n\n<!-- output -->\n```text\nb\n```\n')
    (block,) = (b for b in parse(page) if b.lang == "python")
    page.write_text('```python\nprint("c")\n```\n\n<!-- output -->\n```text\nb\n```\n')
    with pytest.raises(RuntimeError, match="changed under the update"):
        update_output(block, "a\n")


def test_update_refuses_under_xdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers would rewrite the same page at once: the update runs serially only."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    page = tmp_path / "page.md"
    page.write_text('```python\nprint("a")\n```\n\n<!-- output -->\n```text\nb\n```\n')
    (block,) = (b for b in parse(page) if b.lang == "python")
    with pytest.raises(RuntimeError, match="without xdist"):
        update_output(block, "a\n")
    assert "```text\nb\n```" in page.read_text()
