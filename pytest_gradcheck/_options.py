"""The check's options: names, defaults, parsing from text (CLI, ini) and validation.

One table drives everything: the keyword arguments of `gradcheck`, the marker's
keywords, the ``--gradcheck-*`` flags and the ``gradcheck_*`` ini keys.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ._tiers import Tier


@dataclass(frozen=True)
class Options:
    """Resolved options of one check (see the options reference in the docs)."""

    eps: float | str = 1e-5
    samples_per_block: int | None = 10
    seed: int = 0
    kinks: str = "track"
    tolerance: Tier | None = None
    burn_in: int = 0
    device: str | None = None
    wrt: Any = None
    mode: str = "both"
    burn_in_lr: float = 1e-2
    scale: str | None = None
    #: a step-size sweep table for the worst coordinates
    sweep: bool = False
    #: warn when one term's gradient norm in a block exceeds the others' by this factor
    dominance: float = 100.0
    #: a custom burn-in step: ``fn(grads: dict[name, ndarray]) -> dict[name, update]``
    burn_in_step: Callable[..., Any] | None = None
    #: evaluate perturbed points as a batch (vmap) where the framework allows it
    batch: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in NAMES}


NAMES: tuple[str, ...] = tuple(f.name for f in fields(Options))

#: the on/off options (a flag given bare means on)
SWITCHES: tuple[str, ...] = tuple(n for n in NAMES if isinstance(getattr(Options(), n), bool))

#: the words a switch takes as text, in flags and ini keys
ON_WORDS = ("1", "true", "yes", "on")
OFF_WORDS = ("0", "false", "no", "off")

#: options given on the command line / ini file: (flag suffix, help)
CLI: dict[str, tuple[str, str]] = {
    "eps": ("eps", "finite-difference step h, or 'auto' (default 1e-5)"),
    "samples_per_block": ("samples", "coordinates checked per block, or 'all' (default 10)"),
    "seed": ("seed", "seed every RNG is reset to before each evaluation (default 0)"),
    "kinks": ("kinks", "'track' (winner tracking, default) or 'off'"),
    "tolerance": (
        "tolerance",
        "worst passing tier: happy, ok, uncomfortable, wrong (default: auto, happy for a "
        "smooth f, ok where kinks are present)",
    ),
    "burn_in": ("burn-in", "optimisation steps taken before checking (default 0)"),
    "device": (
        "device",
        "run checks on 'cpu' or 'cuda' (alias 'gpu'; 'cuda:N' picks a GPU); "
        "default: where the inputs live",
    ),
    "wrt": ("wrt", "comma-separated block names to check (default: all)"),
    "mode": ("mode", "'coords', 'directions' or 'both' (default)"),
    "burn_in_lr": ("burn-in-lr", "step size of the burn-in's SGD (default 1e-2)"),
    "scale": ("scale", "'auto' rescales the loss when gradients are tiny (default: off)"),
    "sweep": (
        "h-sweep",
        "add a step-size sweep table (h = 1e-1 ... 1e-10) for the worst coordinates "
        "(default off; the bare flag means on, =off turns it off)",
    ),
    "dominance": ("dominance", "term-dominance warning ratio (default 100)"),
    "batch": ("batch", "evaluate perturbed points as a vmap batch where possible (default on)"),
}


def _none(text: str) -> bool:
    return text.strip().lower() in ("", "none", "null", "default")


def parse_switch(name: str, text: str) -> bool:
    """Parse an on/off option given as text; ValueError naming the option otherwise."""
    word = text.strip().lower()
    if word not in ON_WORDS + OFF_WORDS:
        raise ValueError(
            f"gradcheck: {name} must be on or off (true/false, yes/no, 1/0), got {text!r}"
        )
    return word in ON_WORDS


#: what a number option takes, for the error when its text is no number
_NUMBER_TEXT = {
    "eps": "a float in (0, 1) or 'auto'",
    "samples_per_block": "a positive int or 'all' (every coordinate)",
    "seed": "an int in [0, 2**32)",
    "burn_in": "an int >= 0",
    "burn_in_lr": "a positive float",
    "dominance": "a ratio > 1",
}


def parse_text(name: str, text: str) -> Any:
    """Parse an option given as text (a CLI flag or an ini value).

    Text that is no number where a number is due is a ValueError saying what the
    option takes (Python's own "could not convert string to float" names neither).
    """
    try:
        return _parse_text(name, text)
    except ValueError as err:
        if name not in _NUMBER_TEXT or str(err).startswith("gradcheck:"):
            raise
        raise ValueError(f"gradcheck: {name} must be {_NUMBER_TEXT[name]}, got {text!r}") from None


def _parse_text(name: str, text: str) -> Any:
    t = text.strip()
    if name == "eps":
        return "auto" if t.lower() == "auto" else float(t)
    if name == "samples_per_block":
        return None if t.lower() in ("all", "none", "") else int(t)
    if name in ("seed", "burn_in"):
        return int(t)
    if name in ("burn_in_lr", "dominance"):
        return float(t)
    if name == "tolerance":
        return None if _none(t) else Tier.parse(t)
    if name in ("device", "scale"):
        return None if _none(t) else t
    if name == "wrt":
        return None if _none(t) else [w.strip() for w in t.split(",") if w.strip()]
    if name in SWITCHES:
        return parse_switch(name, t)
    return t


def check_names(given: Mapping[str, Any], where: str) -> None:
    """Reject unknown option names, listing the valid ones."""
    unknown = sorted(set(given) - set(NAMES))
    if unknown:
        named = []
        for name in unknown:
            meant = _meant(str(name))
            named.append(repr(name) + (f" ({meant})" if meant else ""))
        raise TypeError(
            f"gradcheck: unknown option(s) {', '.join(named)} in {where}; "
            f"valid options: {', '.join(NAMES)}"
        )


#: the call's arguments that are not options (a marker or a layer cannot set them)
CALL_ONLY = ("params", "grad", "raise_on_fail")


def _meant(name: str) -> str | None:
    """What an unknown option name most likely meant, as a hint; None if nothing.

    A call-only argument is said to be one; a flag's spelling (``samples``,
    ``h_sweep``) maps to its option; else the closest option name.
    """
    if name in CALL_ONLY:
        return "an argument of the gradcheck(...) call only, not an option"
    by_flag = {CLI[n][0].replace("-", "_"): n for n in CLI}
    close = [by_flag[name]] if name in by_flag else []
    close = close or difflib.get_close_matches(name, NAMES, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def resolve(*layers: Mapping[str, Any]) -> Options:
    """Merge option layers, highest precedence first, over the defaults; validate."""
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged.update(layer)
    opts = Options(**merged)
    return validate(opts)


def _is_int(value: Any) -> bool:
    """An int, not a bool (bool is an int subclass: True would pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_wrt(value: Any) -> bool:
    """None, a block name, a predicate on the name, or a collection of block names."""
    if value is None or isinstance(value, str) or callable(value):
        return True
    return (
        isinstance(value, Collection)
        and not isinstance(value, (bytes, Mapping))
        and all(isinstance(name, str) for name in value)
    )


def _torch_device(value: Any) -> bool:
    """Whether `value` is a ``torch.device`` (torch is not imported to ask)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.device)


def _device_text(value: Any) -> str | None:
    """The device option as text: None, ``cpu``, ``cuda`` or ``gpu`` (``:N`` picks a
    GPU). A ``torch.device`` is taken as its text (``torch.device("cuda", 1)`` is
    ``cuda:1``), so the result and the JSON report record a plain string."""
    if value is None:
        return None
    text = str(value) if _torch_device(value) else value
    if isinstance(text, str):
        kind, colon, index = text.partition(":")
        if kind in ("cpu", "cuda", "gpu") and (not colon or (kind != "cpu" and index.isdigit())):
            return text
    raise ValueError(
        "gradcheck: device must be None (where the inputs live), 'cpu', 'cuda' or 'gpu' "
        f"(the same; 'cuda:1' or 'gpu:1' picks a GPU) or a torch.device, got {value!r}"
    )


def validate(o: Options) -> Options:
    """Check every option's type and range; normalise tolerance to a Tier."""
    if o.eps != "auto" and not (_is_number(o.eps) and 0 < float(o.eps) < 1):
        raise ValueError(f"gradcheck: eps must be a float in (0, 1) or 'auto', got {o.eps!r}")
    if o.samples_per_block is not None and (
        not _is_int(o.samples_per_block) or o.samples_per_block < 1
    ):
        raise ValueError(
            "gradcheck: samples_per_block must be a positive int or None (check every "
            f"coordinate), got {o.samples_per_block!r}"
        )
    if not _is_int(o.seed) or not 0 <= o.seed < 2**32:
        raise ValueError(f"gradcheck: seed must be an int in [0, 2**32), got {o.seed!r}")
    if o.kinks not in ("track", "off"):
        raise ValueError(f"gradcheck: kinks must be 'track' or 'off', got {o.kinks!r}")
    if o.mode not in ("coords", "directions", "both"):
        raise ValueError(
            f"gradcheck: mode must be 'coords', 'directions' or 'both', got {o.mode!r}"
        )
    if not _is_int(o.burn_in) or o.burn_in < 0:
        raise ValueError(f"gradcheck: burn_in must be an int >= 0, got {o.burn_in!r}")
    if not (_is_number(o.burn_in_lr) and o.burn_in_lr > 0):
        raise ValueError(f"gradcheck: burn_in_lr must be a positive float, got {o.burn_in_lr!r}")
    if o.scale not in (None, "auto"):
        raise ValueError(f"gradcheck: scale must be None or 'auto', got {o.scale!r}")
    device = _device_text(o.device)
    if device is not o.device:
        o = Options(**{**o.as_dict(), "device": device})
    if not _is_wrt(o.wrt):
        raise TypeError(
            "gradcheck: wrt must be None (every floating block), a list of block names "
            "(like ['args[0]', \"params['W']\"]) or a predicate taking a block name and "
            f"returning a bool, got {o.wrt!r}"
        )
    if not (_is_number(o.dominance) and o.dominance > 1):
        raise ValueError(f"gradcheck: dominance must be a ratio > 1, got {o.dominance!r}")
    if not isinstance(o.batch, bool) or not isinstance(o.sweep, bool):
        raise TypeError("gradcheck: batch and sweep must be True or False")
    if o.burn_in_step is not None and not callable(o.burn_in_step):
        raise TypeError("gradcheck: burn_in_step must be a callable")
    tol = None if o.tolerance is None else Tier.parse(o.tolerance)
    if tol is not o.tolerance:
        o = Options(**{**o.as_dict(), "tolerance": tol})
    return o
