"""Property-based tests (hypothesis) of every chapter's parameter validation: whatever a reader passes
with papermill's ``-p``/``-y``, the chapter's parameter check either accepts it (with values inside the
declared ranges) or stops with one clear :class:`lib.params.ParameterError`, never another exception.

Each chapter's ``SPEC`` is read from its source (the ``SPEC = {...}`` assignment, or the spec literal
passed to ``resolve``), so a new chapter is covered as soon as it exists.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path

import jupytext
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.params import PROFILES, Param, ParameterError, check_device, resolve

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((REPO / "chapters").glob("*.md"))


def chapter_spec(path: Path) -> dict[str, Param]:
    """The chapter's parameter declaration, evaluated with only ``Param`` and ``PROFILES`` in scope."""
    code = "\n".join(c.source for c in jupytext.read(path).cells if c.cell_type == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    tree = ast.parse(code)
    ns = {"Param": Param, "PROFILES": PROFILES}
    # the names a SPEC may use (e.g. a list of choices defined in lib/) come from the chapter's own imports
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([node], []), str(path), "exec"), ns)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() and t.id != "SPEC" for t in node.targets):
            try:  # module-level constants (UPPER_CASE) defined before the SPEC
                exec(compile(ast.Module([node], []), str(path), "exec"), ns)
            except Exception:
                pass
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SPEC" for t in node.targets):
            return eval(compile(ast.Expression(node.value), str(path), "eval"), ns)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "resolve" and node.args:
            return eval(compile(ast.Expression(node.args[0]), str(path), "eval"), ns)
    raise AssertionError(f"{path.name}: no SPEC = {{...}} and no resolve({{...}}, ...) found")


def test_every_chapter_declares_its_parameters():
    assert CHAPTERS
    for path in CHAPTERS:
        spec = chapter_spec(path)
        assert "profile" in spec and "seed" in spec, path.name


ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -0.5, 0.0, 1e300]),
    st.text(max_size=12),
    st.sampled_from(["quick", "full", "cpu", "cuda", "auto", "mps", "float32", "float64", "mlp", "unet", ""]),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=4), st.sampled_from(["mlp", "unet"])), max_size=3),
)


def _valid_defaults(spec: dict[str, Param], profile: str = "quick") -> dict:
    """A parameter set the chapter accepts: every size at its profile default."""
    values = {n: None for n in spec} | {"profile": profile, "seed": 0}
    if "device" in spec:
        values["device"] = "cpu"
    for n, p in spec.items():  # parameters without a default take their first declared choice
        if values[n] is None and p.default is None and p.choices:
            values[n] = p.choices[0]
    return values


def _values_for(spec: dict[str, Param]):
    """A valid parameter set with one to three values replaced by anything papermill could pass,
    sometimes a parameter dropped or an unknown one added: the boundary between accept and reject."""
    names = sorted(spec)
    return st.tuples(
        st.sampled_from(PROFILES),
        st.dictionaries(st.sampled_from(names), ANY_VALUE, min_size=1, max_size=3),
        st.sets(st.sampled_from(names), max_size=1),
        st.booleans(),
    ).map(lambda t: {k: v for k, v in (_valid_defaults(spec, t[0]) | t[1]).items() if k not in t[2] or not t[3]}
          | ({"not_a_parameter": 1} if t[3] and not t[2] else {}))


def _check_like_a_chapter(spec: dict[str, Param], values: dict):
    P = resolve(spec, **values)
    if "device" in P:
        check_device(P.device)
    return P


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_parameter_check_accepts_or_fails_clearly(path):
    spec = chapter_spec(path)

    @settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(values=_values_for(spec))
    def run(values):
        try:
            P = _check_like_a_chapter(spec, values)
        except ParameterError as err:
            assert str(err).strip(), "empty error message"
            return
        # accepted: every value has its declared type and range
        for name, p in spec.items():
            v = P[name]
            if v is None:
                continue
            items = list(v) if p.type is list else [v]
            for item in items:
                if isinstance(item, float):
                    assert math.isfinite(item), f"{name}={v!r} accepted"
                if p.choices is not None:
                    assert item in p.choices
                if p.low is not None:
                    assert item >= p.low
                if p.high is not None:
                    assert item <= p.high

    run()


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_defaults_of_both_profiles_are_valid(path):
    spec = chapter_spec(path)
    for profile in PROFILES:
        _check_like_a_chapter(spec, _valid_defaults(spec, profile))


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_non_finite_numbers_are_refused(path):
    spec = chapter_spec(path)
    for name, p in spec.items():
        if p.type is float or p.elem is float:
            for bad in (float("nan"), float("inf"), -float("inf")):
                values = _valid_defaults(spec) | {name: [bad] if p.type is list else bad}
                with pytest.raises(ParameterError, match=name):
                    _check_like_a_chapter(spec, values)
