"""lib.cache: keys, hits, atomic writes, corruption detection and rebuild."""
import warnings

import pytest
import torch
from torch import nn

from lib.cache import ArtifactCache, CorruptArtifactWarning, artifact_key, cached_model


class Evil:
    """Stands for any object whose unpickling would run code."""


def test_key_depends_on_name_config_and_data_only():
    k = artifact_key("m", {"lr": 0.1, "layers": [1, 2]}, "abc")
    assert k == artifact_key("m", {"layers": [1, 2], "lr": 0.1}, "abc")  # key order irrelevant
    assert k == artifact_key("m", {"lr": 0.1, "layers": (1, 2)}, "abc")  # tuple == list
    assert k != artifact_key("m", {"lr": 0.2, "layers": [1, 2]}, "abc")
    assert k != artifact_key("m", {"lr": 0.1, "layers": [1, 2]}, "abd")
    assert k != artifact_key("n", {"lr": 0.1, "layers": [1, 2]}, "abc")
    with pytest.raises(TypeError):
        artifact_key("m", {"fn": print})


def test_get_or_create_creates_once(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []

    def create():
        calls.append(1)
        return {"w": torch.arange(3.0)}

    a, hit_a = cache.get_or_create("thing", {"x": 1}, create)
    b, hit_b = cache.get_or_create("thing", {"x": 1}, create)
    assert (hit_a, hit_b) == (False, True) and len(calls) == 1
    assert torch.equal(a["w"], b["w"])
    cache.get_or_create("thing", {"x": 2}, create)
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-digest", "garbage"])
def test_corrupt_artifact_is_detected_removed_and_rebuilt(tmp_path, damage):
    cache = ArtifactCache(tmp_path)
    payload, _ = cache.get_or_create("thing", {}, lambda: {"w": torch.ones(1000)})
    pt, digest = cache.paths("thing", payload["__key__"])
    raw = pt.read_bytes()
    if damage == "truncate":
        pt.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        pt.write_bytes(raw[:-100] + bytes([raw[-100] ^ 0xFF]) + raw[-99:])
    elif damage == "no-digest":
        digest.unlink()
    else:  # a file with a matching digest that torch cannot read
        pt.write_bytes(b"not a torch file")
        digest.write_text(__import__("hashlib").sha256(b"not a torch file").hexdigest())
    with pytest.warns(CorruptArtifactWarning, match="rebuilding"):
        again, hit = cache.get_or_create("thing", {}, lambda: {"w": torch.full((1000,), 2.0)})
    assert not hit and again["w"][0] == 2.0
    assert cache.load("thing", payload["__key__"])["w"][0] == 2.0  # the rebuilt artifact is valid


def test_failed_creation_leaves_nothing_in_the_cache(tmp_path):
    cache = ArtifactCache(tmp_path)

    def create():
        raise KeyboardInterrupt  # a run stopped half-way

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_create("thing", {}, create)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_loading_never_executes_code(tmp_path):
    """weights_only=True: a payload with an arbitrary object is rejected, not unpickled."""
    cache = ArtifactCache(tmp_path)
    key = artifact_key("evil", {})
    pt, digest = cache.paths("evil", key)
    pt.parent.mkdir(parents=True)
    torch.save({"__key__": key, "obj": Evil()}, pt)
    digest.write_text(__import__("hashlib").sha256(pt.read_bytes()).hexdigest())
    with pytest.warns(CorruptArtifactWarning, match="torch.load failed"):
        assert cache.load("evil", key) is None


def test_cached_model_trains_once_and_reloads_the_same_weights(tmp_path):
    cache = ArtifactCache(tmp_path)
    trained = []

    def train(m):
        with torch.no_grad():
            m.weight.fill_(3.0)
        trained.append(1)
        return {"loss": [1.0, 0.5]}

    m1, info1 = cached_model("lin", {"n": 2}, lambda: nn.Linear(2, 2), train, cache=cache, verbose=False)
    m2, info2 = cached_model("lin", {"n": 2}, lambda: nn.Linear(2, 2), train, cache=cache, verbose=False)
    assert len(trained) == 1 and not info1["from_cache"] and info2["from_cache"]
    assert info2["loss"] == [1.0, 0.5] and not m2.training
    assert torch.equal(m1.weight, m2.weight) and torch.equal(m1.bias, m2.bias)


def test_architecture_change_without_config_change_is_a_clear_error(tmp_path):
    cache = ArtifactCache(tmp_path)
    cached_model("lin", {}, lambda: nn.Linear(2, 2), lambda m: {}, cache=cache, verbose=False)
    with pytest.raises(RuntimeError, match="does not fit the model"):
        cached_model("lin", {}, lambda: nn.Linear(3, 2), lambda m: {}, cache=cache, verbose=False)
