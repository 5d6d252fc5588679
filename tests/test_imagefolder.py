"""Tests of lib.imagefolder: two-class image folders (the CXPlain chapter's ImageNet path) on tiny generated images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.imagefolder import ImageFolderError, list_image_folder, load_image, load_image_folder


def write_image(path: Path, value: int, size: tuple[int, int], fmt: str | None = None, mode: str = "RGB") -> None:
    """A flat image of grey level ``value`` (w x h = ``size``) with a brighter left column, to see crops."""
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    arr[:, : max(1, size[0] // 8)] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path, format=fmt)


def make_folder(root: Path, n_a: int = 6, n_b: int = 4) -> Path:
    """zebra/: dark PNGs of various sizes; gorilla/: bright JPEGs (and a stray text file)."""
    for i in range(n_a):
        write_image(root / "zebra" / f"z{i}.png", 40, (20 + 3 * i, 16 + i))
    for i in range(n_b):
        write_image(root / "gorilla" / f"g{i}.JPG", 200, (16 + 5 * i, 24), fmt="JPEG")
    (root / "gorilla" / "notes.txt").write_text("not an image")
    return root


def test_lists_files_labels_and_classes(tmp_path):
    root = make_folder(tmp_path / "two")
    files, labels, classes = list_image_folder(root)
    assert classes == ("gorilla", "zebra")  # sorted names; label 0 = first
    assert len(files) == 10 and labels.count(0) == 4 and labels.count(1) == 6
    assert all(f.parent.name == classes[lab] for f, lab in zip(files, labels))
    assert not any(f.suffix == ".txt" for f in files)
    _, labels2, classes2 = list_image_folder(root, classes=["zebra", "gorilla"])
    assert classes2 == ("zebra", "gorilla") and labels2.count(0) == 6


def test_load_resizes_crops_scales_and_labels(tmp_path):
    root = make_folder(tmp_path / "two")
    ds = load_image_folder(root, size=12, test_fraction=0.3, seed=0)
    assert ds.classes == ("gorilla", "zebra") and ds.source == "image-folder" and not ds.is_sample
    assert ds.x_train.shape[1:] == (3, 12, 12) and ds.x_test.shape[1:] == (3, 12, 12)
    assert ds.x_train.dtype == torch.float32 and 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    assert len(ds.y_train) + len(ds.y_test) == 10 and len(ds.y_test) == 3
    assert set(ds.y_test.tolist()) == {0, 1}  # stratified: both classes in the test split
    # labels match the content: gorillas (label 0) are bright, zebras (label 1) dark (ignoring the white column)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        centre = x[:, :, :, 6:].mean(dim=(1, 2, 3))
        assert torch.all((centre > 0.6) == (y == 0)), (centre, y)
    # deterministic, and the fingerprint depends on size and content
    again = load_image_folder(root, size=12, test_fraction=0.3, seed=0)
    assert again.fingerprint == ds.fingerprint and torch.equal(again.x_train, ds.x_train)
    assert load_image_folder(root, size=8, test_fraction=0.3, seed=0).fingerprint != ds.fingerprint
    write_image(root / "zebra" / "z0.png", 41, (20, 16))
    assert load_image_folder(root, size=12, test_fraction=0.3, seed=0).fingerprint != ds.fingerprint


def test_centre_crop_keeps_aspect_and_grey_mode(tmp_path):
    write_image(tmp_path / "wide.png", 100, (40, 10))
    arr = load_image(tmp_path / "wide.png", 10)
    assert arr.shape == (10, 10, 3)
    assert arr[:, 0].mean() < 200  # the white left column (x < 5 of 40) was cropped away
    grey = load_image(tmp_path / "wide.png", 10, mode="L")
    assert grey.shape == (10, 10, 1)


def test_given_train_test_split_is_used(tmp_path):
    root = tmp_path / "split"
    make_folder(root / "train", 3, 3)
    make_folder(root / "test", 2, 1)
    ds = load_image_folder(root, size=8, mode="L")
    assert ds.x_train.shape == (6, 1, 8, 8) and ds.x_test.shape == (3, 1, 8, 8)
    assert ds.y_test.tolist() == [0, 1, 1]


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.write_text("x"), "is a file"),
        (lambda r: r.mkdir(), "exactly two class folders"),
        (lambda r: write_image(r / "only" / "a.png", 10, (8, 8)), "exactly two class folders"),
        (lambda r: [write_image(r / c / "a.png", 10, (8, 8)) for c in "abc"], "found 3: a, b, c"),
        (lambda r: (write_image(r / "a" / "a.png", 10, (8, 8)), (r / "b").mkdir()), "has no images"),
        (lambda r: (write_image(r / "a" / "a.png", 10, (8, 8)), (r / "b").mkdir(), (r / "b" / "x.txt").write_text("")),
         "has no images"),
    ],
    ids=["missing", "file", "empty", "one-class", "three-classes", "empty-class", "no-image-files"],
)
def test_bad_folders_fail_early_and_clearly(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(ImageFolderError, match=message):
        list_image_folder(root)
    with pytest.raises(ImageFolderError, match=message):
        load_image_folder(root, size=8)


def test_unreadable_image_and_bad_arguments(tmp_path):
    root = make_folder(tmp_path / "two")
    (root / "zebra" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageFolderError, match="cannot read image .*broken.png"):
        load_image_folder(root, size=8)
    with pytest.raises(ImageFolderError, match="no class folder"):
        list_image_folder(root, classes=["zebra", "okapi"])
    with pytest.raises(ValueError, match="test_fraction"):
        load_image_folder(root, size=8, test_fraction=1.5)
    with pytest.raises(ValueError, match="mode"):
        load_image_folder(root, size=8, mode="CMYK")
