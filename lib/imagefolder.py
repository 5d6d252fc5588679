"""Two-class image folders as a :class:`lib.data.Dataset`, with PIL only (no torchvision).

Used by the CXPlain chapter for the paper's ImageNet benchmark (Schwab & Karlen 2019, Sec. 4:
two ImageNet classes, images 224x224, explained on 16x16 blocks, top 30% masked). The ImageNet
images themselves are not redistributable and not in this repository; point the chapter's
``image_folder`` parameter at a folder laid out as

    root/<class_a>/*.jpg|png|...        root/train/<class_a>/...   root/test/<class_a>/...
    root/<class_b>/*.jpg|png|...   or   root/train/<class_b>/...   root/test/<class_b>/...

With a single level, a seeded, class-stratified ``test_fraction`` of the images becomes the test
split; with ``train/`` and ``test/`` the given split is used. Classes are the sub-folder names in
sorted order (label 0 = first), or the ``classes`` given. Every image is converted to RGB (or
``mode="L"``), its shorter side resized to ``size`` (bilinear) and centre-cropped to
``size x size``, and scaled to [0, 1] as the paper's preprocessing (float32, ``(N, C, H, W)``).

Bad input fails early with :class:`ImageFolderError` naming the problem: a missing folder, a
file instead of a folder, no class folders, a number of classes other than two, a class folder
without images, or an unreadable image.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lib.data import Dataset, stratified_indices

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderError", "list_image_folder", "load_image", "load_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageFolderError(FileNotFoundError):
    """An image folder is missing, empty, badly laid out or holds an unreadable image."""


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _class_folders(root: Path, classes: Sequence[str] | None) -> list[Path]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        if len(subdirs) != 2:
            found = ", ".join(p.name for p in subdirs) or "none"
            raise ImageFolderError(
                f"image folder {root} must contain exactly two class folders (one per class, e.g. "
                f"zebra/ and gorilla/); found {len(subdirs)}: {found}. Pass classes=[...] to pick two."
            )
        return subdirs
    classes = list(classes)
    if len(classes) != 2 or len(set(classes)) != 2:
        raise ImageFolderError(f"classes must name two distinct class folders, got {classes}")
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        raise ImageFolderError(f"image folder {root} has no class folder(s) {missing}; it has {[p.name for p in subdirs]}")
    return [root / c for c in classes]


def list_image_folder(
    root: str | os.PathLike, classes: Sequence[str] | None = None
) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The image files of a two-class folder, their labels (0/1) and the class names.

    Checks the layout (see the module docstring) and raises :class:`ImageFolderError` with the
    reason if it is not usable. Does not open the images.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise ImageFolderError(f"image folder {root} does not exist; set image_folder to a folder with two class sub-folders")
    if not root.is_dir():
        raise ImageFolderError(f"image folder {root} is a file, not a folder of class sub-folders")
    folders = _class_folders(root, classes)
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        imgs = _images_in(folder)
        if not imgs:
            raise ImageFolderError(
                f"class folder {folder} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        files += imgs
        labels += [label] * len(imgs)
    return files, labels, tuple(f.name for f in folders)


def load_image(path: str | os.PathLike, size: int, mode: str = "RGB") -> np.ndarray:
    """One image as uint8 ``(size, size, C)``: shorter side resized to ``size``, centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ImageFolderError(f"cannot read image {path}: {err}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _fingerprint(root: Path, files: Sequence[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for f in files:
        h.update(f.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def load_image_folder(
    root: str | os.PathLike,
    size: int = 224,
    classes: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    mode: str = "RGB",
) -> Dataset:
    """Load a two-class image folder as a :class:`lib.data.Dataset` (float32 in [0, 1], NCHW).

    Args:
        root: the folder (layouts in the module docstring).
        size: output height and width (224 for the paper's ImageNet benchmark).
        classes: the two class-folder names to use (default: the two sub-folders, sorted).
        test_fraction: share of each class held out for testing when there is no ``test/``.
        seed: seed of that split.
        mode: PIL mode, ``"RGB"`` (3 channels) or ``"L"`` (1 channel).

    Returns:
        a ``Dataset`` with ``source="image-folder"`` and a fingerprint of the files' names and
        contents (plus ``size``, ``mode`` and the split), for cache keys.
    """
    root = Path(root).expanduser()
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if root.is_dir() and (root / "train").is_dir() and (root / "test").is_dir():
        tr_files, tr_labels, names = list_image_folder(root / "train", classes)
        te_files, te_labels, te_names = list_image_folder(root / "test", names)
        split = "given train/test"
    else:
        files, labels, names = list_image_folder(root, classes)
        y = torch.tensor(labels)
        n_test = max(2, int(round(test_fraction * len(files))))
        if n_test >= len(files):
            raise ImageFolderError(f"image folder {root} has only {len(files)} images: too few for a train/test split")
        test_idx = set(stratified_indices(y, n_test, seed=seed).tolist())
        tr_files = [f for i, f in enumerate(files) if i not in test_idx]
        tr_labels = [lab for i, lab in enumerate(labels) if i not in test_idx]
        te_files = [f for i, f in enumerate(files) if i in test_idx]
        te_labels = [lab for i, lab in enumerate(labels) if i in test_idx]
        split = f"test_fraction={test_fraction}, seed={seed}"
    fingerprint = _fingerprint(root, [*tr_files, *te_files], f"size={size};mode={mode};{split};{names}")
    x_train = _to_tensor([load_image(f, size, mode) for f in tr_files])
    x_test = _to_tensor([load_image(f, size, mode) for f in te_files])
    return Dataset(
        name=f"image-folder {root.name}",
        source="image-folder",
        folder=root,
        fingerprint=fingerprint,
        classes=names,
        x_train=x_train,
        y_train=torch.tensor(tr_labels, dtype=torch.long),
        x_test=x_test,
        y_test=torch.tensor(te_labels, dtype=torch.long),
        notes=[f"{len(tr_files)} train / {len(te_files)} test images from {root.name} ({split}), resized to {size}x{size}"],
    )
