"""Validation of a chapter's papermill parameters, before any compute.

Each chapter declares what its ``parameters`` cell accepts and the per-profile defaults of the
sizes left at ``None``::

    SPEC = {
        "profile": Param(str, choices=PROFILES),
        "seed": Param(int, low=0),
        "n_explain": Param(int, low=1, default={"quick": 20, "full": 500}),
        "device": Param(str),          # checked by check_device
    }
    P = resolve(SPEC, profile=profile, seed=seed, n_explain=n_explain, device=device)

``resolve`` raises one :class:`ParameterError` listing every bad parameter with its valid
values, and returns the resolved values (``None`` replaced by the profile's default) as a
read-only mapping with attribute access (``P.n_explain``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

PROFILES = ("quick", "full")


class ParameterError(ValueError):
    """A papermill parameter has a wrong name, type or value."""


@dataclass(frozen=True)
class Param:
    """Declaration of one parameter.

    ``type``: expected Python type (``float`` also accepts ints). ``choices``: allowed values.
    ``low``/``high``: inclusive bounds for numbers (for sequences: bounds of every element).
    ``default``: value used when the parameter is ``None``; a dict maps profile -> value.
    ``elem``: element type when ``type`` is ``list`` (papermill passes YAML lists as lists).
    """

    type: type
    choices: Sequence[Any] | None = None
    low: float | None = None
    high: float | None = None
    default: Any = None
    elem: type | None = None
    help: str = ""

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = f"list of {self.elem.__name__}" if self.elem else self.type.__name__
        rng = []
        if self.low is not None:
            rng.append(f">= {self.low}")
        if self.high is not None:
            rng.append(f"<= {self.high}")
        return kind + (" " + " and ".join(rng) if rng else "") + (f" ({self.help})" if self.help else "")


def _type_ok(value: Any, t: type) -> bool:
    if t is float:  # NaN and infinities pass every range check, so they are refused here
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def _check(name: str, value: Any, p: Param) -> str | None:
    if p.type is list:
        if not isinstance(value, (list, tuple)):
            return f"{name}={value!r}: expected {p.describe()}"
        items = list(value)
    else:
        if not _type_ok(value, p.type):
            return f"{name}={value!r} ({type(value).__name__}): expected {p.describe()}"
        items = [value]
    for item in items:
        if p.elem is not None and not _type_ok(item, p.elem):
            return f"{name}={value!r}: expected {p.describe()}"
        if p.choices is not None and item not in p.choices:
            return f"{name}={value!r}: expected {p.describe()}"
        if p.low is not None and item < p.low or p.high is not None and item > p.high:
            return f"{name}={value!r}: expected {p.describe()}"
    return None


class Resolved(Mapping):
    """Read-only resolved parameters with attribute access."""

    def __init__(self, values: dict):
        self._values = MappingProxyType(dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return "Parameters(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


def resolve(spec: Mapping[str, Param], **values: Any) -> Resolved:
    """Check ``values`` against ``spec`` and fill profile defaults; raise one clear error."""
    problems = []
    unknown = sorted(set(values) - set(spec))
    if unknown:
        problems.append(f"unknown parameter(s) {unknown}; this chapter accepts {sorted(spec)}")
    missing = sorted(set(spec) - set(values))
    if missing:
        problems.append(f"missing parameter(s) {missing}")
    profile = values.get("profile")
    if "profile" in spec:
        err = _check("profile", profile, spec["profile"])
        if err:
            problems.append(err)
            profile = None
    out = {}
    for name, p in spec.items():
        if name not in values:
            continue
        value = values[name]
        if value is None and p.default is not None:
            if isinstance(p.default, Mapping):
                if profile is None:
                    continue  # reported above
                value = p.default[profile]
            else:
                value = p.default
        if value is None:
            out[name] = None
            continue
        err = _check(name, value, p)
        if err:
            problems.append(err)
        out[name] = value
    if problems:
        raise ParameterError(
            "bad chapter parameter(s):\n  - " + "\n  - ".join(problems)
            + "\nSet them in the papermill call, e.g. `-p profile quick -p seed 0`."
        )
    return Resolved(out)


def check_device(device: str) -> str:
    """Return ``device`` if torch can use it here, else raise a :class:`ParameterError` saying why.

    ``"auto"`` resolves to ``"cuda"`` when a CUDA GPU is available and to ``"cpu"`` otherwise.
    """
    import torch

    if not isinstance(device, str):
        raise ParameterError(f"device={device!r}: expected a string such as 'cpu', 'cuda' or 'auto'")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ParameterError(f"device={device!r} is not a torch device ({err}); use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device={device!r} requested but this machine has no CUDA GPU; run with -p device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ParameterError(f"device={device!r} requested but MPS is not available; run with -p device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ParameterError(f"device={device!r}: only 'cpu', 'cuda[:N]' and 'mps' are supported")
    return device
