"""Datasets: a registry of (files, sha256, mirrors) and loaders that never hang offline.

Used by every chapter (CEM and CXPlain: MNIST; GCE: MNIST, Fashion-MNIST, CIFAR-10; RDE: MNIST, and
STL-10 where it is available).

Where a loader looks, in order (the first hit wins):

1. an explicit ``path=`` argument, or the environment variable ``XAI_DATA_<NAME>``
   (``XAI_DATA_MNIST``, ``XAI_DATA_FASHION_MNIST``, ``XAI_DATA_CIFAR10``, ``XAI_DATA_STL10``): a folder
   in the dataset's usual layout (for CIFAR-10 and STL-10 also the ``.tar.gz`` archive). A missing or corrupt
   explicit path is an error, never silently skipped;
2. the local data cache ``$XAI_DATA_HOME/<name>`` (default ``~/.cache/xai-book/data/<name>``);
   a file there that fails its checksum is deleted with a warning;
3. a download from the registry's mirrors into that cache, checksum-verified, written
   atomically (skipped when ``XAI_OFFLINE=1``; an offline machine fails fast, it does not hang);
4. the small real sample committed in the repository's ``data/`` folder, with a visible
   notice saying so and how to get the full data.

If none of these exists (CIFAR-10 and STL-10 have no committed sample), :class:`DatasetNotFoundError`
says what was tried and how to fix it.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_ROOT = REPO_ROOT / "data"
DOWNLOAD_TIMEOUT_S = 20


class DatasetNotFoundError(FileNotFoundError):
    """No usable copy of a dataset was found; the message lists what was tried and the fix."""


class ChecksumError(ValueError):
    """A data file's content does not match the sha256 recorded in the registry."""


class SampleDataWarning(UserWarning):
    """The committed small sample is used instead of the full dataset."""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resource:
    """One file of a dataset.

    ``sha256`` is the digest of the file as the mirrors serve it. For gzipped files
    ``content_sha256`` (if known) is the digest of the decompressed payload, so that a
    recompressed copy of the same data (e.g. Debian's Fashion-MNIST package) is accepted too.
    """

    filename: str
    sha256: str
    content_sha256: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the loader needs to know about one dataset."""

    name: str
    title: str
    homepage: str
    license: str
    mirrors: tuple[str, ...]
    resources: tuple[Resource, ...]
    classes: tuple[str, ...]
    reader: Callable[[Path], "RawSplits"]
    sample_folder: str | None = None
    sample_resources: tuple[Resource, ...] = ()
    extract: bool = False  # the download is an archive to unpack into the cache folder
    subdirs: tuple[str, ...] = ()  # where the files sit under a torchvision-style root (e.g. MNIST/raw)
    # Archives of which the reader needs only some members (STL-10: 0.36 GB of the 3.1 GB it unpacks to): the members to
    # unpack, and the folder they unpack to. With these set, a cache holding the verified archive but
    # not that folder (an interrupted unpacking, an archive put there by hand) is unpacked before
    # reading, and the unpacking is atomic (a temporary folder renamed when complete).
    extract_members: tuple[str, ...] = ()
    extracted_folder: str | None = None
    # The files the reader reads (file names). An explicit folder in an unverifiable layout is
    # fingerprinted from these only (STL-10's folder also holds the 2.8 GB unlabeled split); empty:
    # every file in the folder.
    read_files: tuple[str, ...] = ()

    @property
    def env_var(self) -> str:
        return "XAI_DATA_" + self.name.upper().replace("-", "_")


@dataclass
class RawSplits:
    """uint8 images (N, H, W) or (N, H, W, C) and integer labels, as stored on disk."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {arr.size} values")
    return arr.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder} has no {stem}(.gz)")


def read_idx_folder(folder: Path) -> RawSplits:
    """Read the four MNIST-style IDX files (gzipped or not) from ``folder``."""
    return RawSplits(
        x_train=_read_idx(_find(folder, "train-images-idx3-ubyte")),
        y_train=_read_idx(_find(folder, "train-labels-idx1-ubyte")),
        x_test=_read_idx(_find(folder, "t10k-images-idx3-ubyte")),
        y_test=_read_idx(_find(folder, "t10k-labels-idx1-ubyte")),
    )


CIFAR10_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, got {data.shape}, {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10_folder(folder: Path) -> RawSplits:
    """Read CIFAR-10's python layout: ``cifar-10-batches-py/{data_batch_1..5,test_batch}``."""
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    missing = [n for n in (*CIFAR10_BATCHES, "test_batch") if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks CIFAR-10 batch files {missing}")
    parts = [_cifar_batch(folder / n) for n in CIFAR10_BATCHES]
    x_test, y_test = _cifar_batch(folder / "test_batch")
    return RawSplits(
        x_train=np.concatenate([p[0] for p in parts]),
        y_train=np.concatenate([p[1] for p in parts]),
        x_test=x_test,
        y_test=y_test,
    )


STL10_FOLDER = "stl10_binary"
STL10_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
STL10_SHAPE = (3, 96, 96)
STL10_IMAGE_BYTES = 3 * 96 * 96
# The official labelled splits (STL-10 homepage: 500 training and 800 test images per class). The reader
# checks every file's exact byte count against them, since no checksum of the unpacked files is
# published (the archive's is: see the registry). Tests on tiny generated files patch these sizes.
STL10_SPLIT_SIZES = {"train": 5000, "test": 8000}


def _stl10_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    n = STL10_SPLIT_SIZES[split]
    xp, yp = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    for path, expected in ((xp, n * STL10_IMAGE_BYTES), (yp, n)):
        size = path.stat().st_size
        if size != expected:
            raise ValueError(
                f"{path} has {size} bytes; the STL-10 {split} split has {n} images, so {expected} bytes are "
                f"expected ({'3 x 96 x 96 bytes per image' if path is xp else 'one byte per label'}). The file is "
                "truncated or not STL-10's: delete it and unpack stl10_binary.tar.gz again."
            )
    # each image: 96 x 96 red values, then green, then blue, each channel in column-major order
    raw = np.fromfile(xp, dtype=np.uint8).reshape(n, *STL10_SHAPE)  # (N, C, column, row)
    images = raw.transpose(0, 3, 2, 1)  # (N, row, column, C)
    labels = np.fromfile(yp, dtype=np.uint8)
    if labels.min() < 1 or labels.max() > 10:
        raise ValueError(f"{yp}: STL-10 labels are 1..10, found values in [{labels.min()}, {labels.max()}]")
    return images, labels.astype(np.int64) - 1


def _stl10_binary_folder(folder: Path) -> Path | None:
    for candidate in (folder / STL10_FOLDER, folder):
        if all((candidate / n).is_file() for n in STL10_FILES):
            return candidate
    return None


def read_stl10_folder(folder: Path) -> RawSplits:
    """Read STL-10's binary layout: ``stl10_binary/{train,test}_{X,y}.bin`` (the folder itself or its
    parent). Images are uint8, 3 x 96 x 96 per image, each channel stored column by column; labels are
    one byte each, 1..10, returned as 0..9 (``class_names.txt``: airplane, bird, car, cat, deer, dog,
    horse, monkey, ship, truck). The unlabeled split is not read. Every file's size is checked against
    the official split sizes (:data:`STL10_SPLIT_SIZES`)."""
    found = _stl10_binary_folder(folder)
    if found is None:
        missing = [n for n in STL10_FILES if not (folder / STL10_FOLDER / n).is_file()]
        raise FileNotFoundError(f"{folder} lacks STL-10 files {missing} (looked in {folder / STL10_FOLDER} and {folder})")
    x_train, y_train = _stl10_split(found, "train")
    x_test, y_test = _stl10_split(found, "test")
    return RawSplits(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _resources(names: Sequence[str], sha: Sequence[str], content: Sequence[str | None] | None = None):
    content = content or [None] * len(names)
    return tuple(Resource(n, s, c) for n, s, c in zip(names, sha, content))


REGISTRY: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits (LeCun, Cortes, Burges)",
        homepage="http://yann.lecun.com/exdb/mnist/",
        license="CC BY-SA 3.0",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        resources=_resources(
            _IDX_NAMES,
            (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        ),
        classes=tuple(str(i) for i in range(10)),
        reader=read_idx_folder,
        subdirs=("MNIST/raw",),
        sample_folder="mnist-sample",
        sample_resources=_resources(
            _IDX_NAMES,
            (
                "a4c06242081bb411190d7fe0186ccb24526e01aa697322860d26d5a6d3a6db81",
                "76b6d117e66e850d080a02e43a34660b408eba4a64a3acb747f22bd94fa65b56",
                "42944ff0c425814307699c234adc62d5efe06640cf901430f3504f5a1a4ebe8d",
                "862484ddf6073c4a1eed75ad021d7849ee0be7b2e80b40cade08c54218a172a3",
            ),
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST (Xiao, Rasul, Vollgraf; Zalando Research)",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        license="MIT",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://ossci-datasets.s3.amazonaws.com/fashion-mnist/",
        ),
        resources=_resources(
            _IDX_NAMES,
            (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
            (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        reader=read_idx_folder,
        subdirs=("FashionMNIST/raw",),
        sample_folder="fashion-mnist-sample",
        sample_resources=_resources(
            _IDX_NAMES,
            (
                "a34eb3873ed849b6309f23f7767a1f712ca518310bb720c00f69d6ac42f72c5f",
                "efc25c7bd1660bf8101ad6ec7bda45625494497c730c55e10fb902e56cd46ee1",
                "c81bad3c6fdb0f448a0e2bca8eaed75be19ba5f83e2e2935dba40b11cab4e07b",
                "190c0d326a9646b0adf2945c5816a4812261d99af8586b1a273eccfdae0ee919",
            ),
        ),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        title="CIFAR-10 (Krizhevsky 2009)",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        license="see homepage (research use)",
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        resources=(Resource("cifar-10-python.tar.gz", "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        reader=read_cifar10_folder,
        extract=True,
    ),
    # The archive's sha256 and size (2,640,397,119 bytes) are not published by the dataset's authors; they
    # are the ones TensorFlow Datasets records for this URL (tensorflow/datasets,
    # tensorflow_datasets/url_checksums/stl10.txt), and other packages pin the same sha256 (batchup's
    # stl.py); torchvision's MD5 of the same file is 91f7769df0f17e558f3565bffb0c7dfb. The unpacked
    # files have no published checksum: the reader checks their exact sizes.
    "stl10": DatasetSpec(
        name="stl10",
        title="STL-10 (Coates, Lee, Ng 2011)",
        homepage="https://cs.stanford.edu/~acoates/stl10/",
        license="see homepage (images from ImageNet; research use)",
        mirrors=("http://ai.stanford.edu/~acoates/stl10/", "https://cs.stanford.edu/~acoates/stl10/"),
        resources=(Resource("stl10_binary.tar.gz", "f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866"),),
        classes=("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
        reader=read_stl10_folder,
        extract=True,
        extract_members=tuple(f"{STL10_FOLDER}/{n}" for n in (*STL10_FILES, "class_names.txt")),
        extracted_folder=STL10_FOLDER,
        read_files=STL10_FILES,
    ),
}


# --------------------------------------------------------------------------------------------
# Files: hashing, verification, download
# --------------------------------------------------------------------------------------------
def sha256_file(path: Path, decompress: bool = False) -> str:
    """sha256 of a file's bytes (of its gunzipped payload when ``decompress``)."""
    h = hashlib.sha256()
    opener = gzip.open if decompress else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, resource: Resource) -> None:
    """Raise :class:`ChecksumError` unless ``path`` holds the registry's content for ``resource``."""
    actual = sha256_file(path)
    if actual == resource.sha256:
        return
    if resource.content_sha256 and path.suffix == ".gz":
        try:
            if sha256_file(path, decompress=True) == resource.content_sha256:
                return
        except (OSError, EOFError):
            pass
    raise ChecksumError(
        f"checksum mismatch for {path}: expected sha256 {resource.sha256}, got {actual}. "
        "The file is corrupt or a different version; delete it and rerun (the loader will download "
        "or fall back to the committed sample)."
    )


def _download(url: str, dest: Path, resource: Resource) -> None:
    """Download ``url`` to ``dest`` atomically, verifying the checksum before the final rename."""
    from lib.progress import progress_bar

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with progress_bar(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        verify(tmp, resource)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def offline() -> bool:
    return os.environ.get("XAI_OFFLINE", "").lower() in {"1", "true", "yes"}


def cache_root() -> Path:
    return Path(os.environ.get("XAI_DATA_HOME", Path.home() / ".cache" / "xai-book" / "data"))


# --------------------------------------------------------------------------------------------
# Locating a dataset
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Located:
    folder: Path
    source: str  # "explicit", "cache", "download" or "sample"
    fingerprint: str


def _fingerprint(resources: Sequence[Resource], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for r in resources:
        h.update(f"{r.filename}:{r.sha256}".encode())
    return h.hexdigest()[:16]


def _complete_and_valid(folder: Path, resources: Sequence[Resource], on_bad: str) -> bool:
    """True if every resource is present and verified; bad cache files are removed ('delete')."""
    for r in resources:
        p = folder / r.filename
        if not p.exists():
            return False
        try:
            verify(p, r)
        except ChecksumError as err:
            if on_bad == "raise":
                raise
            warnings.warn(f"{err} Removing the corrupt cached file.", stacklevel=3)
            p.unlink(missing_ok=True)
            return False
    return True


def _extract(archive: Path, folder: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")


def _extract_members(archive: Path, folder: Path, members: Sequence[str], top: str) -> None:
    """Unpack only ``members`` of ``archive`` (all under ``top/``) into ``folder/top``, atomically: into a
    temporary folder first, renamed when every member is there (one sequential pass over the archive)."""
    wanted = set(members)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{top}."))
    try:
        with tarfile.open(archive, "r|*") as tar:  # a stream: one pass, no seeking back in the gzip
            for member in tar:
                if member.name in wanted:
                    tar.extract(member, tmp, filter="data")
                    wanted.discard(member.name)
        if wanted:
            raise DatasetNotFoundError(f"{archive} lacks the members {sorted(wanted)}; it is not the expected archive")
        target = folder / top
        if target.exists():  # an incomplete earlier unpacking
            shutil.rmtree(target)
        os.replace(tmp / top, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpack(spec: "DatasetSpec", archive: Path, folder: Path) -> None:
    """Unpack ``archive`` into ``folder`` as ``spec`` says (every member, or only ``extract_members``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if spec.extract_members:
        _extract_members(archive, folder, spec.extract_members, spec.extracted_folder or "")
    else:
        _extract(archive, folder)


def _needs_unpack(spec: "DatasetSpec", folder: Path) -> bool:
    if spec.extracted_folder:
        return not (folder / spec.extracted_folder).is_dir()
    return not any(folder.glob("*/"))


def _locate_explicit(spec: DatasetSpec, path: Path) -> Located:
    if not path.exists():
        raise DatasetNotFoundError(
            f"{spec.title}: the given path {path} does not exist. Fix the path (argument or "
            f"{spec.env_var}), or unset it to use the data cache / download / committed sample."
        )
    if path.is_file() and spec.extract:  # an archive given directly
        verify(path, spec.resources[0])
        out = cache_root() / spec.name
        if _needs_unpack(spec, out):
            _unpack(spec, path, out)
        return Located(out, "explicit", _fingerprint(spec.resources))
    if path.is_file():
        raise DatasetNotFoundError(f"{spec.title}: expected a folder in the usual layout, got the file {path}.")
    for sub in spec.subdirs:  # a torchvision root (e.g. ~/data with MNIST/raw/*.gz inside)
        if (path / sub).is_dir():
            path = path / sub
            break
    # A folder: verify every registry file present in it (IDX layouts), else rely on the reader.
    present = [r for r in spec.resources if (path / r.filename).exists()]
    for r in present:
        verify(path / r.filename, r)
    if present and len(present) == len(spec.resources):
        if spec.extract and spec.extracted_folder and _needs_unpack(spec, path):
            # the verified archive, not unpacked: unpack it into the data cache (never into the given folder)
            out = cache_root() / spec.name
            if _needs_unpack(spec, out):
                _unpack(spec, path / spec.resources[0].filename, out)
            return Located(out, "explicit", _fingerprint(spec.resources))
        return Located(path, "explicit", _fingerprint(spec.resources))
    # Unverifiable layout (e.g. extracted CIFAR-10, uncompressed IDX): fingerprint the contents
    # (only the files the reader reads, where the spec names them).
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and (not spec.read_files or q.name in spec.read_files)):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return Located(path, "explicit", h.hexdigest()[:16])


def locate(name: str, path: str | os.PathLike | None = None, download: bool | None = None) -> Located:
    """Find a usable copy of dataset ``name``; see the module docstring for the order."""
    spec = get_spec(name)
    path = path or os.environ.get(spec.env_var)
    if path:
        return _locate_explicit(spec, Path(path).expanduser())

    tried = []
    folder = cache_root() / spec.name
    if _complete_and_valid(folder, spec.resources, on_bad="delete"):
        if spec.extract and spec.extracted_folder and _needs_unpack(spec, folder):
            _unpack(spec, folder / spec.resources[0].filename, folder)
        return Located(folder, "cache", _fingerprint(spec.resources))
    tried.append(f"data cache {folder}")

    if download is None:
        download = not offline()
    if download:
        errors = []
        for r in spec.resources:
            if (folder / r.filename).exists():
                continue
            for mirror in spec.mirrors:
                try:
                    _download(mirror + r.filename, folder / r.filename, r)
                    break
                except (urllib.error.URLError, OSError, ChecksumError) as err:
                    errors.append(f"{mirror + r.filename}: {err}")
            else:
                break
        if _complete_and_valid(folder, spec.resources, on_bad="delete"):
            if spec.extract:
                _unpack(spec, folder / spec.resources[0].filename, folder)
            return Located(folder, "download", _fingerprint(spec.resources))
        tried.append("download (" + "; ".join(errors[-2:]) + ")")
    else:
        tried.append("download (disabled: XAI_OFFLINE=1)")

    if spec.sample_folder:
        sample = SAMPLE_ROOT / spec.sample_folder
        _complete_and_valid(sample, spec.sample_resources, on_bad="raise")
        return Located(sample, "sample", _fingerprint(spec.sample_resources, "sample"))
    raise DatasetNotFoundError(
        f"{spec.title} is not available here. Tried: " + "; ".join(tried) + ". "
        f"Fix: download {', '.join(r.filename for r in spec.resources)} from {spec.homepage} and point "
        f"{spec.env_var} at it (the archive or its extracted folder), or put it in {folder}. "
        "No sample of it is committed in data/."
    )


def get_spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(REGISTRY)}") from None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A dataset as float tensors in [0, 1], shaped (N, C, H, W), with int64 labels."""

    name: str
    source: str
    folder: Path
    fingerprint: str
    classes: tuple[str, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    notes: list[str] = field(default_factory=list)

    @property
    def is_sample(self) -> bool:
        return self.source == "sample"

    def describe(self) -> str:
        """One line for a chapter's output: what data this run uses."""
        kind = "committed SAMPLE (not the full dataset)" if self.is_sample else f"full dataset ({self.source})"
        return (
            f"{self.name}: {kind}; train {tuple(self.x_train.shape)}, test {tuple(self.x_test.shape)}; "
            f"fingerprint {self.fingerprint}"
        )


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def load_dataset(name: str, path: str | os.PathLike | None = None, download: bool | None = None, verbose: bool = True) -> Dataset:
    """Load dataset ``name`` ('mnist', 'fashion-mnist', 'cifar10', 'stl10') as a :class:`Dataset`.

    When only the committed sample is available, prints a notice (and emits a
    :class:`SampleDataWarning`) naming the full data's source and how to point the loader at it.
    """
    spec = get_spec(name)
    loc = locate(name, path=path, download=download)
    raw = spec.reader(loc.folder)
    ds = Dataset(
        name=name,
        source=loc.source,
        folder=loc.folder,
        fingerprint=loc.fingerprint,
        classes=spec.classes,
        x_train=_to_tensor(raw.x_train),
        y_train=torch.from_numpy(np.array(raw.y_train, dtype=np.int64)),
        x_test=_to_tensor(raw.x_test),
        y_test=torch.from_numpy(np.array(raw.y_test, dtype=np.int64)),
    )
    if ds.is_sample:
        msg = (
            f"NOTE: the full {spec.title} is not reachable here, so this run uses the small real sample "
            f"committed in data/{spec.sample_folder} ({len(ds.y_train)} train / {len(ds.y_test)} test images). "
            f"Numbers are therefore not at paper scale. For the full data, run where {spec.mirrors[0]} is "
            f"reachable, or set {spec.env_var} to a local copy."
        )
        ds.notes.append(msg)
        warnings.warn(msg, SampleDataWarning, stacklevel=2)
        if verbose:
            print(msg)
    return ds


def load_mnist(path: str | os.PathLike | None = None, download: bool | None = None, verbose: bool = True) -> Dataset:
    """MNIST (used by the CEM and CXPlain chapters)."""
    return load_dataset("mnist", path, download, verbose)


def load_fashion_mnist(path: str | os.PathLike | None = None, download: bool | None = None, verbose: bool = True) -> Dataset:
    """Fashion-MNIST (used by the GCE chapter)."""
    return load_dataset("fashion-mnist", path, download, verbose)


def load_cifar10(path: str | os.PathLike | None = None, download: bool | None = None, verbose: bool = True) -> Dataset:
    """CIFAR-10 (used by the GCE reproduction chapter); no committed sample exists."""
    return load_dataset("cifar10", path, download, verbose)


def load_stl10(path: str | os.PathLike | None = None, download: bool | None = None, verbose: bool = True) -> Dataset:
    """STL-10's labelled splits (5,000 training, 8,000 test images, 3 x 96 x 96, RGB, labels 0..9), used by
    the RDE chapter's STL-10 experiment; no committed sample exists. ``path`` or ``XAI_DATA_STL10``: the
    archive ``stl10_binary.tar.gz`` (its sha256 is checked, and the labelled files are unpacked into the
    data cache) or a folder holding ``stl10_binary/`` (or its files). ``download=True`` fetches the
    2.6 GB archive from the official site into the data cache (checksum-verified); the unlabeled split
    is never unpacked."""
    return load_dataset("stl10", path, download, verbose)


# --------------------------------------------------------------------------------------------
# Splits and subsets
# --------------------------------------------------------------------------------------------
def select_classes(x: torch.Tensor, y: torch.Tensor, classes: Sequence[int], relabel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only samples of ``classes`` (e.g. digits (3, 8)); relabel them 0..k-1 in the given order."""
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct, got {classes}")
    keep = torch.isin(y, torch.tensor(classes))
    xs, ys = x[keep], y[keep]
    if relabel:
        lut = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
        lut[torch.tensor(classes)] = torch.arange(len(classes))
        ys = lut[ys]
    return xs, ys


def stratified_indices(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices drawn without replacement with class proportions kept (largest remainder), sorted.

    Deterministic for a given ``seed``; independent of torch's global RNG.
    """
    y_np = y.cpu().numpy()
    if n > len(y_np):
        raise ValueError(f"asked for {n} samples but only {len(y_np)} are available")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y_np, return_counts=True)
    exact = counts * n / len(y_np)
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    chosen = [rng.choice(np.flatnonzero(y_np == c), size=k, replace=False) for c, k in zip(classes, take)]
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def stratified_split(y: torch.Tensor, n_holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of ``y`` into (rest, holdout) with a stratified holdout of size ``n_holdout``."""
    hold = stratified_indices(y, n_holdout, seed)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[hold] = False
    return torch.nonzero(mask).squeeze(1), hold


# --------------------------------------------------------------------------------------------
# CIFAR-10 class pairs (GCE reproduction chapter: the [Re] study's horse vs truck)
# --------------------------------------------------------------------------------------------
CIFAR10_HORSE_TRUCK = (7, 9)  # CIFAR-10 label indices of "horse" and "truck"


@dataclass
class ClassPair:
    """Two (or more) classes of a dataset, relabelled 0..k-1 in the given order, with a stratified
    validation split carved from the training split (the [Re] study: 40,000 / 10,000 of CIFAR-10's
    50,000 training images, i.e. a 20 % share) and pixel values in [0, ``pixel_max``]."""

    classes: tuple[int, ...]
    names: tuple[str, ...]
    pixel_max: float
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def class_pair(ds: Dataset, classes: Sequence[int], val_share: float = 0.2, seed: int = 0, pixel_max: float = 1.0) -> ClassPair:
    """Select ``classes`` from a loaded :class:`Dataset` (e.g. :func:`load_cifar10`), split off a stratified
    validation share, and scale pixels to [0, ``pixel_max``] (255 gives the raw byte range that the [Re]
    study's CIFAR classifier was trained on; the loaders return [0, 1])."""
    if not 0.0 <= val_share < 1.0:
        raise ValueError(f"val_share must be in [0, 1), got {val_share}")
    if pixel_max <= 0:
        raise ValueError(f"pixel_max must be positive, got {pixel_max}")
    bad = [c for c in classes if not 0 <= c < len(ds.classes)]
    if bad:
        raise ValueError(f"classes {bad} are not labels of {ds.name} (0..{len(ds.classes) - 1})")
    x, y = select_classes(ds.x_train, ds.y_train, classes)
    xt, yt = select_classes(ds.x_test, ds.y_test, classes)
    if len(y) == 0:
        raise ValueError(f"{ds.name} has no training images of classes {tuple(classes)}")
    n_val = int(round(val_share * len(y)))
    rest, hold = stratified_split(y, n_val, seed) if n_val else (torch.arange(len(y)), torch.arange(0))
    return ClassPair(tuple(classes), tuple(ds.classes[c] for c in classes), float(pixel_max),
                     x[rest] * pixel_max, y[rest], x[hold] * pixel_max, y[hold], xt * pixel_max, yt)
