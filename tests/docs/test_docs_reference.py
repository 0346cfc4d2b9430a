"""The reference pages agree with the code, and the site builds.

Every option, flag and ini key is in docs/options.md with its real default; the strict
build fails on a page missing from the navigation, a broken link or anchor, and an API
reference that does not resolve.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_gradcheck._options import CLI, NAMES, Options

ROOT = Path(__file__).resolve().parents[2]
OPTIONS_PAGE = ROOT / "docs" / "options.md"


def _option_rows() -> dict[str, list[str]]:
    """The rows of the options table, keyed by the option's keyword."""
    rows: dict[str, list[str]] = {}
    for line in OPTIONS_PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) == 5 else None
        if m and m[1] in NAMES:
            rows[m[1]] = cells
    return rows


def test_every_option_is_in_the_table() -> None:
    assert sorted(_option_rows()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_option_row_matches_the_code(name: str) -> None:
    _, flag, ini, default, meaning = _option_rows()[name]
    if name in CLI:
        assert flag == f"`--gradcheck-{CLI[name][0]}`"
        assert ini == f"`gradcheck_{name}`"
    else:
        assert flag == ini == "none"
    value = getattr(Options(), name)
    shown = default.strip("`").replace('"', "'")
    if isinstance(value, float) and not isinstance(value, bool):
        same = shown[:1].isdigit() and float(shown) == value
    else:
        same = shown in (repr(value), str(value))
    assert same, f"{name}: the page says {shown}, the default is {value!r}"
    assert meaning


def test_every_flag_and_ini_key_is_documented(request: pytest.FixtureRequest) -> None:
    """Every --gradcheck-* flag and gradcheck_* ini key pytest knows is on the page."""
    text = OPTIONS_PAGE.read_text()
    parser = request.config._parser  # the session's parser holds the plugin's options
    flags = {
        name
        for group in parser._groups
        for opt in group.options
        for name in opt.names()
        if name.startswith("--gradcheck-")
    }
    inis = {key for key in parser._inidict if key.startswith("gradcheck_")}
    assert flags and inis
    missing = sorted(f for f in flags if f"`{f}" not in text)
    missing += sorted(k for k in inis if f"`{k}`" not in text)
    assert not missing, f"not in docs/options.md: {missing}"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """The site builds with --strict: no broken link, anchor or API reference.

    Without --quiet: with it, mkdocs drops warnings before --strict counts them, and a
    broken build exits 0.
    """
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
