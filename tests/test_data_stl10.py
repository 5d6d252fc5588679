"""lib.data's STL-10 loader on tiny generated files in the real binary layout (the data is not reachable here)."""
import hashlib
import io
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lib import data
from lib.data import ChecksumError, DatasetNotFoundError, Resource, load_stl10, locate

N_TRAIN, N_TEST = 3, 4
STL_UNLABELED = 2 * 27648  # bytes of the generated unlabeled split (two images)


def stl10_bytes(images: np.ndarray) -> bytes:
    """The format as the STL-10 homepage states it, written out independently of the reader: per image the
    red channel, then green, then blue; each channel in column-major order (all rows of column 0 first)."""
    out = bytearray()
    for img in images:  # (row, column, channel)
        for ch in range(3):
            for col in range(96):
                out += bytes(int(v) for v in img[:, col, ch])
    return bytes(out)


def pattern_images(n: int, seed: int) -> np.ndarray:
    """(n, 96, 96, 3) uint8: red = the row (0 at the top), green = the column, blue = a seeded random value;
    image k has a white 10 x 20 block in its top left corner (rows 0-9, columns 0-19) and value k in pixel
    (95, 95) of the blue channel."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    imgs = np.zeros((n, 96, 96, 3), dtype=np.uint8)
    for k in range(n):
        imgs[k, :, :, 0] = rows
        imgs[k, :, :, 1] = cols
        imgs[k, :, :, 2] = rng.integers(0, 256, (96, 96))
        imgs[k, :10, :20] = 255
        imgs[k, 95, 95, 2] = k
    return imgs


def write_stl10(folder: Path, seed: int = 0, labels=None) -> dict:
    """Tiny STL-10 files (N_TRAIN training, N_TEST test images) in ``folder``; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = pattern_images(n, seed + (split == "test"))
        y = np.asarray(labels[split] if labels else (np.arange(n) % 10 + 1), dtype=np.uint8)  # labels 1..10 on disk
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(x))
        (folder / f"{split}_y.bin").write_bytes(y.tobytes())
        written[split] = (x, y)
    (folder / "class_names.txt").write_text("\n".join(data.REGISTRY["stl10"].classes) + "\n")
    return written


def make_archive(path: Path, src: Path, unlabeled: bytes = b"\x07" * STL_UNLABELED) -> Path:
    """``stl10_binary.tar.gz`` as the real one is laid out: every file under ``stl10_binary/``, with an
    unlabeled split and fold indices that the loader must not unpack."""
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(p.name for p in src.iterdir()):
            tar.add(src / name, arcname=f"stl10_binary/{name}")
        for name, payload in (("unlabeled_X.bin", unlabeled), ("fold_indices.txt", b"0 1 2\n")):
            info = tarfile.TarInfo(f"stl10_binary/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_sizes(monkeypatch):
    monkeypatch.setattr(data, "STL10_SPLIT_SIZES", {"train": N_TRAIN, "test": N_TEST})


def registry_for(monkeypatch, archive: Path, mirrors=None):
    spec = replace(data.REGISTRY["stl10"], resources=(Resource("stl10_binary.tar.gz", sha(archive)),),
                   mirrors=mirrors or data.REGISTRY["stl10"].mirrors)
    monkeypatch.setitem(data.REGISTRY, "stl10", spec)
    return spec


def test_registry_names_the_official_archive_and_its_published_checksum():
    spec = data.REGISTRY["stl10"]
    assert spec.mirrors[0] + spec.resources[0].filename == "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
    # TensorFlow Datasets' url_checksums/stl10.txt for that URL
    assert spec.resources[0].sha256 == "f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866"
    assert spec.env_var == "XAI_DATA_STL10" and spec.sample_folder is None
    assert spec.classes == ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
    assert data.STL10_SPLIT_SIZES == {"train": 5000, "test": 8000}


def test_images_come_out_the_right_way_up_with_their_labels(tmp_path, tiny_sizes):
    written = write_stl10(tmp_path / "stl10_binary", labels={"train": [1, 10, 4], "test": [2, 3, 9, 10]})
    ds = load_stl10(path=tmp_path)
    assert ds.source == "explicit" and not ds.is_sample and ds.classes[0] == "airplane"
    assert ds.x_train.shape == (N_TRAIN, 3, 96, 96) and ds.x_test.shape == (N_TEST, 3, 96, 96)
    assert ds.x_train.dtype == torch.float32
    assert ds.y_train.tolist() == [0, 9, 3] and ds.y_test.tolist() == [1, 2, 8, 9]  # 1..10 on disk -> 0..9
    x = ds.x_test[2]
    # the white block sits in the top-left corner, 10 rows high and 20 columns wide (not transposed, not flipped)
    assert bool((x[:, :10, :20] == 1).all()) and float(x[:, 10:, 20:].min(0).values.max()) < 1
    assert float(x[0, 10, 30] * 255) == 10 and float(x[1, 10, 30] * 255) == 30  # red = row, green = column
    rows = torch.arange(96, dtype=torch.float32)
    assert torch.equal(x[0, 10:, 50] * 255, rows[10:]) and torch.equal(x[1, 50, 20:] * 255, rows[20:])
    assert float(x[2, 95, 95] * 255) == 2  # image order kept
    assert torch.equal(ds.x_train[1].permute(1, 2, 0) * 255, torch.from_numpy(written["train"][0][1]).float())


def test_the_stl10_binary_folder_itself_is_accepted(tmp_path, tiny_sizes):
    write_stl10(tmp_path / "stl10_binary")
    ds = load_stl10(path=tmp_path / "stl10_binary")
    assert len(ds.y_train) == N_TRAIN and ds.folder == tmp_path / "stl10_binary"


def test_sizes_other_than_the_official_splits_are_refused(tmp_path):
    write_stl10(tmp_path / "stl10_binary")  # 3 / 4 images, not 5000 / 8000
    with pytest.raises(ValueError, match=r"train split has 5000 images, so 138240000 bytes"):
        load_stl10(path=tmp_path)


def test_truncated_images_and_bad_labels_are_refused(tmp_path, tiny_sizes):
    folder = tmp_path / "stl10_binary"
    write_stl10(folder)
    (folder / "test_X.bin").write_bytes((folder / "test_X.bin").read_bytes()[:-1])
    with pytest.raises(ValueError, match="test_X.bin has 110591 bytes"):
        load_stl10(path=tmp_path)
    write_stl10(folder, labels={"train": [1, 2, 11], "test": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="labels are 1..10"):
        load_stl10(path=tmp_path)
    write_stl10(folder, labels={"train": [1, 2, 3], "test": [0, 2, 3, 4]})
    with pytest.raises(ValueError, match="labels are 1..10"):
        load_stl10(path=tmp_path)


def test_explicit_folder_fingerprint_covers_only_the_files_read(tmp_path, tiny_sizes):
    folder = tmp_path / "stl10_binary"
    write_stl10(folder)
    (folder / "unlabeled_X.bin").write_bytes(b"\x01" * 100)
    fp = load_stl10(path=tmp_path).fingerprint
    (folder / "unlabeled_X.bin").write_bytes(b"\x02" * 100)
    assert load_stl10(path=tmp_path).fingerprint == fp  # the unlabeled split is not read, so not hashed
    raw = bytearray((folder / "train_X.bin").read_bytes())
    raw[5] ^= 1
    (folder / "train_X.bin").write_bytes(bytes(raw))
    assert load_stl10(path=tmp_path).fingerprint != fp


def test_explicit_archive_is_verified_and_only_the_labelled_files_unpacked(tmp_path, monkeypatch, tiny_sizes):
    written = write_stl10(tmp_path / "src")
    archive = make_archive(tmp_path / "stl10_binary.tar.gz", tmp_path / "src")
    with pytest.raises(ChecksumError, match="stl10_binary.tar.gz"):  # the registry's sha256 is the real archive's
        load_stl10(path=archive)
    registry_for(monkeypatch, archive)
    monkeypatch.setenv("XAI_DATA_STL10", str(archive))
    ds = load_stl10()
    unpacked = data.cache_root() / "stl10" / "stl10_binary"
    assert ds.source == "explicit" and ds.folder == data.cache_root() / "stl10"
    assert sorted(p.name for p in unpacked.iterdir()) == sorted(["class_names.txt", *data.STL10_FILES])
    assert not list((data.cache_root() / "stl10").glob(".stl10_binary.*"))  # no temporary folder left
    assert torch.equal(ds.x_test[0].permute(1, 2, 0) * 255, torch.from_numpy(written["test"][0][0]).float())
    # a folder holding the archive alone is unpacked into the data cache too, never into the given folder
    shutil.rmtree(unpacked)
    only_archive = tmp_path / "downloads"
    only_archive.mkdir()
    shutil.copy(archive, only_archive / archive.name)
    ds2 = load_stl10(path=only_archive)
    assert ds2.folder == data.cache_root() / "stl10" and unpacked.is_dir()
    assert sorted(p.name for p in only_archive.iterdir()) == [archive.name]
    assert ds2.fingerprint == ds.fingerprint


def test_download_verifies_caches_and_unpacks_again_when_needed(tmp_path, monkeypatch, tiny_sizes):
    write_stl10(tmp_path / "src")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = make_archive(mirror / "stl10_binary.tar.gz", tmp_path / "src")
    registry_for(monkeypatch, archive, mirrors=(mirror.as_uri() + "/",))
    assert locate("stl10", download=True).source == "download"
    cache = data.cache_root() / "stl10"
    assert (cache / "stl10_binary" / "train_X.bin").is_file() and not (cache / "stl10_binary" / "unlabeled_X.bin").exists()
    shutil.rmtree(cache / "stl10_binary")  # an interrupted unpacking: the verified archive is unpacked again
    ds = load_stl10(download=False)
    assert ds.source == "cache" and len(ds.y_test) == N_TEST


def test_missing_offline_is_a_clear_error_naming_the_fix():
    with pytest.raises(DatasetNotFoundError, match=r"XAI_DATA_STL10.*No sample of it is committed"):
        load_stl10()
    with pytest.raises(DatasetNotFoundError, match="cs.stanford.edu/~acoates/stl10"):
        load_stl10(download=False)


def test_an_archive_without_the_labelled_files_is_refused(tmp_path, monkeypatch, tiny_sizes):
    src = tmp_path / "src"
    src.mkdir()
    (src / "class_names.txt").write_text("airplane\n")
    archive = make_archive(tmp_path / "stl10_binary.tar.gz", src)
    registry_for(monkeypatch, archive)
    with pytest.raises(DatasetNotFoundError, match="lacks the members"):
        load_stl10(path=archive)
    assert not (data.cache_root() / "stl10" / "stl10_binary").exists()
