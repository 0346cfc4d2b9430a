"""How the options are spelled outside Python: the ``--gradcheck-*`` flags, the
``gradcheck_*`` ini keys, and how a setting names where it came from.

`_options` parses and validates the values; this module holds the names: the session
settings (flags and keys with no call keyword), the argparse action of the on/off
flags, and the check that rejects an unknown ``gradcheck_*`` ini key (pytest would
only warn, and the setting would silently not apply).
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Iterable, Sequence
from typing import Any

from ._gates import DEFAULT_FACTOR
from ._options import CLI, OFF_WORDS, ON_WORDS

#: the session settings (no call keyword): name -> (metavar, help)
SESSION: dict[str, tuple[str, str]] = {
    "json": ("PATH", "write every gradient check's result as JSON to PATH"),
    "report": (
        "{summary,blocks,off}",
        "the 'gradient checks' terminal section: one row per check (summary, default), "
        "plus one line per block (blocks), or none (off)",
    ),
    "fail_tier": (
        "TIER",
        "fail the session when any check is worse than TIER "
        "(happy, ok, uncomfortable, wrong), even where the test caught the error",
    ),
    "baseline": (
        "PATH",
        "fail the session when a check's max rel error grew past the factor, or a check "
        "disappeared, compared with the JSON report at PATH",
    ),
    "baseline_factor": (
        "FACTOR",
        f"how much a check's max rel error may grow over the baseline (default {DEFAULT_FACTOR:g})",
    ),
    "save_baseline": ("PATH", "write the session's checks to PATH as a baseline"),
}

PREFIX = "gradcheck_"

#: argparse's attribute for arguments an action leaves unrecognised (private, but
#: stable since Python 3.2: its subparsers use it); pytest takes them as test paths
_UNRECOGNIZED = "_unrecognized_args"


def flag(name: str) -> str:
    """The command-line flag of an option or session setting."""
    return "--gradcheck-" + (CLI[name][0] if name in CLI else name.replace("_", "-"))


def ini_keys() -> list[str]:
    """Every ini key of pytest-gradcheck."""
    return [PREFIX + name for name in (*CLI, *SESSION)]


def given(name: str, text: str, source: str) -> str:
    """A setting as the user gave it, for messages: ``--gradcheck-x=v`` or
    ``gradcheck_x = v (ini)``, so a message never names a flag that was not given."""
    if source == "cli":
        return f"{flag(name)}={text}"
    return f"{PREFIX}{name} = {text} (ini)"


# -- on/off flags ---------------------------------------------------------------------


def _is_path(text: str) -> bool:
    """Whether `text` names an existing test file or directory (``path::test`` too)."""
    return os.path.exists(text.split("::", 1)[0])


class Switch(argparse.Action):
    """An on/off flag: given bare it means on; ``=off`` (false, no, 0) means off.

    The value is optional, so a bare flag followed by a test path
    (``--gradcheck-h-sweep tests/``) would swallow the path: a value that is not an
    on/off word but names an existing path is handed back to pytest as a test path
    (argparse's unrecognised arguments, which pytest takes as paths), and the flag
    means on. Any other value is a usage error naming the flag.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs="?", const="on", metavar="on|off")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        text = self.const if values is None else str(values)
        if text.strip().lower() not in ON_WORDS + OFF_WORDS:
            if not _is_path(text):
                raise argparse.ArgumentError(
                    self,
                    f"takes on or off ({'/'.join(ON_WORDS)}, {'/'.join(OFF_WORDS)}), got "
                    f"{text!r}, which is no existing test path either",
                )
            # a test path after a bare flag: back to pytest
            setattr(namespace, _UNRECOGNIZED, [*getattr(namespace, _UNRECOGNIZED, []), text])
            text = self.const
        setattr(namespace, self.dest, text)


# -- unknown ini keys ---------------------------------------------------------------------


def unknown_ini_keys(present: Iterable[str]) -> list[str]:
    """The ``gradcheck_*`` keys among `present` that are not ours, sorted."""
    ours = set(ini_keys())
    return sorted(k for k in present if k.startswith(PREFIX) and k not in ours)


def _suggestion(key: str) -> str | None:
    """The key meant by a typo, or by a flag's spelling (``gradcheck_samples``)."""
    by_flag = {PREFIX + flag(n)[len("--gradcheck-") :].replace("-", "_"): n for n in CLI}
    if key in by_flag and PREFIX + by_flag[key] != key:
        return PREFIX + by_flag[key]
    # compared without the prefix, which every key shares
    names = [k[len(PREFIX) :] for k in ini_keys()]
    close = difflib.get_close_matches(key[len(PREFIX) :], names, n=1, cutoff=0.6)
    return PREFIX + close[0] if close else None


def unknown_ini_message(keys: Sequence[str], where: str) -> str:
    """The usage error for unknown ``gradcheck_*`` ini keys: each key, what it may
    have meant, and the valid keys."""
    parts = []
    for key in keys:
        meant = _suggestion(key)
        parts.append(f"{key!r}" + (f" (did you mean {meant!r}?)" if meant else ""))
    return (
        f"gradcheck: unknown ini key(s) {', '.join(parts)} in {where}; "
        f"valid keys: {', '.join(ini_keys())}"
    )
