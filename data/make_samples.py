"""Derive the small real-data samples committed under ``data/`` from full local copies.

The book must build offline, so each dataset it uses has a small *real* sample committed here,
stored in the dataset's own file layout (gzipped IDX files for MNIST and Fashion-MNIST) so that
``lib.data`` reads sample and full data through the same code path.

Usage (from the repository root)::

    python data/make_samples.py --mnist ../shared/data/mnist10k.npz \
                                --fashion-mnist ../shared/data/fashion-mnist

The selection is stratified by class and seeded, and the gzip streams are written with a fixed
timestamp, so rerunning the script reproduces the committed files byte for byte (their sha256
sums are recorded in ``lib/data.py``'s registry and in ``data/README.md``).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20181210  # fixed: changing it changes the committed files


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``per_class`` indices of every class (all of them if a class has fewer), in a
    seeded random order (so that the sample, like the real files, is not sorted by class)."""
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, size=min(per_class, idx.size), replace=False))
    return rng.permutation(np.concatenate(chosen))


def write_idx_gz(path: Path, array: np.ndarray) -> str:
    """Write a uint8 array as a gzipped IDX file (mtime 0, reproducible); return its sha256."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(header + array.tobytes())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_idx_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def save_split(out: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    prefix = "train" if split == "train" else "t10k"
    for name, arr in ((f"{prefix}-images-idx3-ubyte.gz", images), (f"{prefix}-labels-idx1-ubyte.gz", labels)):
        digest = write_idx_gz(out / name, arr)
        print(f"{digest}  {(out / name).relative_to(HERE)}  {arr.shape}")


def make_mnist(npz: Path) -> None:
    """MNIST sample: the 10,000 real digits at hand, split 8,000 'train' / 2,000 'test' (stratified)."""
    d = np.load(npz)
    images, labels = d["images"], d["labels"]
    rng = np.random.default_rng(SEED)
    test = stratified_indices(labels, 200, rng)
    train = rng.permutation(np.setdiff1d(np.arange(labels.size), test))
    out = HERE / "mnist-sample"
    save_split(out, "train", images[train], labels[train])
    save_split(out, "test", images[test], labels[test])


def make_fashion_mnist(folder: Path) -> None:
    """Fashion-MNIST sample: 600 per class from the official train split, 100 per class from test."""
    rng = np.random.default_rng(SEED)
    out = HERE / "fashion-mnist-sample"
    for split, prefix, per_class in (("train", "train", 600), ("test", "t10k", 100)):
        images = read_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz")
        idx = stratified_indices(labels, per_class, rng)
        save_split(out, split, images[idx], labels[idx])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, help="npz with uint8 'images' (N,28,28) and 'labels'")
    parser.add_argument("--fashion-mnist", type=Path, help="folder with the four Fashion-MNIST IDX .gz files")
    args = parser.parse_args()
    if not (args.mnist or args.fashion_mnist):
        parser.error("give --mnist and/or --fashion-mnist")
    if args.mnist:
        make_mnist(args.mnist)
    if args.fashion_mnist:
        make_fashion_mnist(args.fashion_mnist)


if __name__ == "__main__":
    main()
