"""lib.params: one clear error for bad papermill parameters, profile defaults."""
import pytest
import torch

from lib.params import PROFILES, Param, ParameterError, check_device, resolve

SPEC = {
    "profile": Param(str, choices=PROFILES),
    "seed": Param(int, low=0),
    "n": Param(int, low=1, high=1000, default={"quick": 20, "full": 500}),
    "rate": Param(float, low=0.0, high=1.0, default=0.5),
    "digits": Param(list, elem=int, low=0, high=9, default=[3, 8]),
}


def test_profile_defaults_fill_none():
    P = resolve(SPEC, profile="quick", seed=0, n=None, rate=None, digits=None)
    assert (P.n, P.rate, P.digits) == (20, 0.5, [3, 8])
    assert resolve(SPEC, profile="full", seed=1, n=None, rate=1, digits=[1, 7]).n == 500
    assert resolve(SPEC, profile="full", seed=1, n=7, rate=0.1, digits=None).n == 7


@pytest.mark.parametrize(
    "override, message",
    [
        ({"profile": "fast"}, "profile='fast'.*one of 'quick', 'full'"),
        ({"seed": -1}, "seed=-1.*>= 0"),
        ({"seed": "3"}, "seed='3'.*expected int"),
        ({"seed": True}, "seed=True"),
        ({"n": 0}, "n=0"),
        ({"rate": 1.5}, "rate=1.5.*<= 1.0"),
        ({"digits": [3, 10]}, "digits=\\[3, 10\\]"),
        ({"digits": 3}, "digits=3.*list of int"),
        ({"typo": 1}, "unknown parameter.*typo"),
    ],
)
def test_bad_values_raise_one_error_naming_the_parameter(override, message):
    values = {"profile": "quick", "seed": 0, "n": None, "rate": None, "digits": None, **override}
    with pytest.raises(ParameterError, match=message):
        resolve(SPEC, **values)


def test_all_problems_are_reported_together():
    with pytest.raises(ParameterError) as err:
        resolve(SPEC, profile="quick", seed=-1, n=0, rate=None, digits=None)
    assert "seed=-1" in str(err.value) and "n=0" in str(err.value)


def test_missing_parameter_is_reported():
    with pytest.raises(ParameterError, match="missing parameter.*rate"):
        resolve(SPEC, profile="quick", seed=0, n=None, digits=None)


def test_device_check():
    assert check_device("cpu") == "cpu"
    with pytest.raises(ParameterError, match="not a torch device"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="no CUDA GPU.*device cpu"):
            check_device("cuda")


def test_auto_device_resolves_to_what_this_machine_has():
    import torch

    from lib.params import check_device

    assert check_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
