"""lib.data: registry checksums, the lookup order, clear errors, splits."""
import gzip
import hashlib
import pickle
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lib import data
from lib.data import (ChecksumError, DatasetNotFoundError, Resource, SampleDataWarning, load_cifar10, load_mnist,
                      locate, select_classes, stratified_indices, stratified_split)

REPO = Path(__file__).resolve().parent.parent


def write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_idx_dataset(folder: Path, n_train=30, n_test=10, seed=0) -> tuple[Resource, ...]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
    }
    for name, arr in arrays.items():
        write_idx(folder / name, arr)
    return tuple(Resource(name, sha(folder / name)) for name in arrays)


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """MNIST's registry entry pointed at a local 'mirror' (file:// URL) holding tiny real-format files."""
    mirror = tmp_path / "mirror"
    resources = tiny_idx_dataset(mirror)
    spec = replace(data.REGISTRY["mnist"], mirrors=(mirror.as_uri() + "/",), resources=resources)
    monkeypatch.setitem(data.REGISTRY, "mnist", spec)
    return mirror, spec


def test_committed_samples_match_their_registry_checksums():
    for spec in data.REGISTRY.values():
        for r in spec.sample_resources:
            assert sha(REPO / "data" / spec.sample_folder / r.filename) == r.sha256, r.filename


def test_offline_falls_back_to_the_committed_sample_and_says_so(capsys):
    with pytest.warns(SampleDataWarning, match="committed in data/mnist-sample"):
        ds = load_mnist()
    assert ds.is_sample and ds.source == "sample"
    assert ds.x_train.shape == (8000, 1, 28, 28) and ds.x_test.shape == (2000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert set(ds.y_test.tolist()) == set(range(10))
    assert "XAI_DATA_MNIST" in capsys.readouterr().out  # the notice tells how to get the full data


def test_download_verifies_and_caches(fake_mnist, tmp_path):
    mirror, spec = fake_mnist
    loc = locate("mnist", download=True)
    assert loc.source == "download"
    for r in spec.resources:
        assert sha(loc.folder / r.filename) == r.sha256
    assert not list(loc.folder.glob(".*part"))  # no temporary files left behind
    assert locate("mnist", download=True).source == "cache"  # second call: no download
    ds = load_mnist(download=True)
    assert ds.x_train.shape == (30, 1, 28, 28) and not ds.is_sample


def test_download_with_wrong_checksum_is_rejected_and_nothing_is_kept(fake_mnist, monkeypatch):
    mirror, spec = fake_mnist
    bad = replace(spec, resources=(Resource(spec.resources[0].filename, "0" * 64), *spec.resources[1:]))
    monkeypatch.setitem(data.REGISTRY, "mnist", bad)
    loc = locate("mnist", download=True)
    assert loc.source == "sample"  # the bad download was not accepted
    cache = data.cache_root() / "mnist"
    assert not (cache / spec.resources[0].filename).exists()
    assert not list(cache.glob(".*part"))


def test_unreachable_mirror_falls_back_without_hanging(monkeypatch):
    spec = replace(data.REGISTRY["mnist"], mirrors=("http://127.0.0.1:9/",))  # nothing listens on port 9
    monkeypatch.setitem(data.REGISTRY, "mnist", spec)
    assert locate("mnist", download=True).source == "sample"


def test_corrupt_cache_file_is_removed_and_reported(fake_mnist):
    mirror, spec = fake_mnist
    cache = data.cache_root() / "mnist"
    cache.mkdir(parents=True)
    for r in spec.resources:
        shutil.copy(mirror / r.filename, cache / r.filename)
    (cache / spec.resources[0].filename).write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="checksum mismatch"):
        loc = locate("mnist", download=False)
    assert loc.source == "sample"
    assert not (cache / spec.resources[0].filename).exists()


def test_explicit_path_with_wrong_content_is_an_error(tmp_path):
    folder = tmp_path / "not-mnist"
    tiny_idx_dataset(folder)  # right layout, different content than the registry's MNIST
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz"):
        load_mnist(path=folder)


def test_torchvision_root_is_accepted(tmp_path, monkeypatch):
    resources = tiny_idx_dataset(tmp_path / "MNIST" / "raw")
    monkeypatch.setitem(data.REGISTRY, "mnist", replace(data.REGISTRY["mnist"], resources=resources))
    ds = load_mnist(path=tmp_path)
    assert ds.source == "explicit" and ds.folder == tmp_path / "MNIST" / "raw" and len(ds.y_train) == 30


def test_explicit_missing_path_is_an_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_DATA_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="XAI_DATA_MNIST"):
        load_mnist()


def test_recompressed_copy_is_accepted_by_content_checksum(tmp_path):
    # Fashion-MNIST's registry has content hashes: a recompressed copy of the upstream data passes.
    spec = data.REGISTRY["fashion-mnist"]
    r = spec.resources[1]  # train labels: small
    upstream = tmp_path / r.filename
    labels = np.arange(60000) % 10  # not the real labels: must be rejected
    write_idx(upstream, labels)
    with pytest.raises(ChecksumError):
        data.verify(upstream, r)
    payload_ok = Resource(r.filename, "0" * 64, hashlib.sha256(gzip.decompress(upstream.read_bytes())).hexdigest())
    data.verify(upstream, payload_ok)  # same payload, different gzip bytes: accepted


def make_tiny_cifar(folder: Path, n=6, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    batches = {}
    folder.mkdir(parents=True)
    for name in (*data.CIFAR10_BATCHES, "test_batch"):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = list(rng.integers(0, 10, n))
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": y}, f)
        batches[name] = (x, y)
    return batches


def test_cifar10_reads_the_real_layout(tmp_path):
    batches = make_tiny_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_cifar10(path=tmp_path)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    x0, y0 = batches["data_batch_1"]
    # CIFAR stores each image as 1024 red, then green, then blue values, row-major
    assert torch.equal(ds.x_train[0, 1, 0, :5], torch.from_numpy(x0[0, 1024:1029]).float() / 255)
    assert ds.y_train[:6].tolist() == [int(v) for v in y0]


def test_cifar10_missing_offline_is_a_clear_error():
    with pytest.raises(DatasetNotFoundError, match="XAI_DATA_CIFAR10"):
        load_cifar10()


def test_cifar10_archive_with_wrong_checksum_is_an_error(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"not the archive")
    with pytest.raises(ChecksumError, match="cifar-10-python.tar.gz"):
        load_cifar10(path=archive)


def test_stratified_indices_keep_proportions_and_are_seeded():
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    idx = stratified_indices(y, 20, seed=1)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert torch.bincount(y[idx]).tolist() == [12, 6, 2]
    assert torch.equal(idx, stratified_indices(y, 20, seed=1))
    assert not torch.equal(idx, stratified_indices(y, 20, seed=2))
    rest, hold = stratified_split(y, 10, seed=0)
    assert len(rest) == 90 and not set(rest.tolist()) & set(hold.tolist())
    with pytest.raises(ValueError):
        stratified_indices(y, 101, seed=0)


def test_select_classes_relabels_in_the_given_order():
    x = torch.arange(6).float().view(6, 1, 1, 1)
    y = torch.tensor([3, 8, 1, 8, 3, 5])
    xs, ys = select_classes(x, y, (8, 3))
    assert xs.flatten().tolist() == [0, 1, 3, 4] and ys.tolist() == [1, 0, 0, 1]
