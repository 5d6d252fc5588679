"""lib.cache: keys, hits, atomic writes, corruption detection and rebuild."""
import warnings

import pytest
import torch
from torch import nn

from lib.cache import ArtifactCache, CorruptArtifactWarning, artifact_key, cached_model


class Evil:
    """Stands for any object whose unpickling would run code."""


def test_key_depends_on_name_config_data_and_code():
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


# --- keys cover the code that builds an artifact (issue 7 F) ------------------------------------

def _import_file(path, name):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


MODEL_SRC = "from torch import nn\nclass Tiny(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.lin = nn.Linear(2, 1)\n    def forward(self, x):\n        return self.lin(x)\n"
TRAIN_SRC = "import torch\ndef train(model):\n    with torch.no_grad():\n        model.lin.weight.fill_({v})\n    return {{'v': {v}}}\n"


@pytest.fixture
def code_tree(tmp_path, monkeypatch):
    import lib.cache

    monkeypatch.setattr(lib.cache, "REPO_ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "tiny_model.py").write_text(MODEL_SRC)
    (tmp_path / "pkg" / "tiny_train.py").write_text(TRAIN_SRC.format(v=1.0))
    (tmp_path / "pkg" / "unrelated.py").write_text("X = 1\n")
    return tmp_path


def _run(tree, cache):
    model_mod = _import_file(tree / "pkg" / "tiny_model.py", "tiny_model")
    train_mod = _import_file(tree / "pkg" / "tiny_train.py", "tiny_train")
    _import_file(tree / "pkg" / "unrelated.py", "unrelated")
    return cached_model("tiny", {"a": 1}, model_mod.Tiny, train_mod.train, cache=cache, verbose=False, code=[train_mod.train])


def test_editing_the_training_code_retrains_and_unrelated_edits_do_not(code_tree, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    m1, info1 = _run(code_tree, cache)
    assert not info1["from_cache"] and m1.lin.weight[0, 0].item() == 1.0
    _, info2 = _run(code_tree, cache)
    assert info2["from_cache"] and info2["key"] == info1["key"]
    (code_tree / "pkg" / "unrelated.py").write_text("X = 2  # edited\n")
    _, info3 = _run(code_tree, cache)
    assert info3["from_cache"] and info3["key"] == info1["key"]
    (code_tree / "pkg" / "tiny_train.py").write_text(TRAIN_SRC.format(v=2.0))  # the training code changes
    m4, info4 = _run(code_tree, cache)
    assert not info4["from_cache"] and info4["key"] != info1["key"] and m4.lin.weight[0, 0].item() == 2.0


def test_editing_the_model_class_retrains(code_tree, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    _, info1 = _run(code_tree, cache)
    (code_tree / "pkg" / "tiny_model.py").write_text(MODEL_SRC + "# a comment changes the file\n")
    _, info2 = _run(code_tree, cache)
    assert not info2["from_cache"] and info2["key"] != info1["key"]


def test_get_or_create_key_covers_code(code_tree, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    calls = []

    def create():
        calls.append(1)
        return {"w": torch.zeros(1)}

    train_mod = _import_file(code_tree / "pkg" / "tiny_train.py", "tiny_train")
    cache.get_or_create("thing", {}, create, code=[train_mod])
    cache.get_or_create("thing", {}, create, code=[train_mod])
    assert len(calls) == 1
    (code_tree / "pkg" / "tiny_train.py").write_text(TRAIN_SRC.format(v=3.0))
    cache.get_or_create("thing", {}, create, code=[train_mod])
    assert len(calls) == 2


def test_code_fingerprint_rejects_objects_without_source():
    from lib.cache import code_fingerprint

    with pytest.raises(TypeError):
        code_fingerprint([len])  # a builtin has no source file


# --- subnormal weights (issue 7 item 17) --------------------------------------------------------

def _planted_subnormal_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():
        w = net[0].weight
        mask = torch.rand_like(w) < 0.3
        w[mask] = torch.full_like(w[mask], 1e-40)  # subnormal in float32
    return net


def test_cached_model_zeroes_subnormal_weights_and_keeps_outputs(tmp_path):
    x = torch.randn(32, 64)
    reference = _planted_subnormal_net()
    expected = reference(x)
    n_sub = int(((reference[0].weight != 0) & (reference[0].weight.abs() < torch.finfo(torch.float32).tiny)).sum())
    assert n_sub > 1000

    def train(model):
        model.load_state_dict(reference.state_dict())  # "training" ends with subnormal weights
        return {}

    cache = ArtifactCache(tmp_path)
    for expect_hit in (False, True):  # after training, and after loading
        model, info = cached_model("sub", {}, _planted_subnormal_net, train, cache=cache, verbose=False)
        assert info["from_cache"] is expect_hit
        w = model[0].weight
        assert int(((w != 0) & (w.abs() < torch.finfo(torch.float32).tiny)).sum()) == 0
        assert torch.equal(model(x), expected)  # contributions below 1e-38 do not change float32 outputs
    assert info["subnormal_zeroed"] == n_sub


def test_flush_subnormal_counts_and_leaves_normal_values():
    from lib.cache import flush_subnormal_

    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1e-40, -2e-39, 0.5]]))
    assert flush_subnormal_(lin) == 2
    assert lin.weight.tolist() == [[0.0, 0.0, 0.5]]


def test_float64_training_survives_the_cache(tmp_path):
    from lib.train import fit, predict

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    cache = ArtifactCache(tmp_path)

    def build():
        torch.manual_seed(1)
        return nn.Linear(4, 2)

    train = lambda m: fit(m, x, y, nn.functional.cross_entropy, epochs=2, batch_size=16, dtype=torch.float64, progress=False)
    m1, i1 = cached_model("f64", {}, build, train, cache=cache, verbose=False)
    m2, i2 = cached_model("f64", {}, build, train, cache=cache, verbose=False)
    assert (i1["from_cache"], i2["from_cache"]) == (False, True)
    assert m1.weight.dtype == m2.weight.dtype == torch.float64
    assert torch.equal(predict(m1, x), predict(m2, x))


def test_committed_artifacts_are_found_by_key_and_checked(tmp_path):
    committed = tmp_path / "committed"
    source = ArtifactCache(tmp_path / "a", committed=[])
    payload, _ = source.get_or_create("m", {"x": 1}, lambda: {"w": torch.ones(2)})
    key = payload["__key__"]
    (committed / "m").mkdir(parents=True)
    for ext in (".pt", ".sha256"):
        (committed / "m" / f"{key}{ext}").write_bytes((tmp_path / "a" / "m" / f"{key}{ext}").read_bytes())
    fresh = ArtifactCache(tmp_path / "b", committed=[committed])
    calls = []
    got, hit = fresh.get_or_create("m", {"x": 1}, lambda: calls.append(1) or {"w": torch.zeros(2)})
    assert hit and not calls and torch.equal(got["w"], torch.ones(2))
    fresh.get_or_create("m", {"x": 2}, lambda: calls.append(1) or {"w": torch.zeros(2)})  # another config trains
    assert calls == [1]
    (committed / "m" / f"{key}.pt").write_bytes(b"tampered")
    with pytest.raises(RuntimeError, match="checksum"):
        ArtifactCache(tmp_path / "c", committed=[committed]).get_or_create("m", {"x": 1}, lambda: {"w": torch.zeros(2)})
