"""Omniglot: counts and splits of the real data, exact pixels, rotations, cache, damaged archives."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data import load_dataset
from fewshot.data.omniglot import load_omniglot
from fewshot.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def background(omniglot, omniglot_root):
    """The real data with Lake et al.'s split, loaded after ``omniglot`` so it reads the cache:
    decoding a single PNG then is an error (no wall-clock bound, which a busy machine breaks)."""
    import fewshot.data.omniglot as module

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached load decoded an image")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "_decode", no_decoding)
        return load_omniglot(omniglot_root, split_scheme="background")


def characters(dataset, split):
    return {dataset.class_names[c].rsplit("/", 1)[0] for c in dataset.split_classes(split)}


def expected_pixels(archive, member, size):
    """What the loader should make of one PNG: Lanczos to ``size``, inverted."""
    with zipfile.ZipFile(archive) as z:
        image = Image.open(io.BytesIO(z.read(member))).convert("L")
    return 255 - np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


# -- the real data -------------------------------------------------------------------------

def test_images_are_uint8_28px_with_20_per_class(omniglot):
    assert omniglot.images.dtype == torch.uint8
    assert omniglot.image_shape == (1, 28, 28)
    assert omniglot.num_classes == 1623 * 4
    assert len(omniglot.images) == 32460 * 4
    assert (omniglot.class_counts == 20).all()


def test_vinyals_split_sizes(omniglot):
    sizes = {split: len(omniglot.split_classes(split)) for split in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 4112, "val": 688, "test": 1692, "trainval": 4800}
    chars = {split: characters(omniglot, split) for split in sizes}
    assert {s: len(c) for s, c in chars.items()} == {"train": 1028, "val": 172, "test": 423, "trainval": 1200}
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"] and not chars["val"] & chars["test"]
    assert chars["trainval"] == chars["train"] | chars["val"]


def test_background_scheme_splits_964_and_659_characters(background):
    dataset = background
    assert len(characters(dataset, "train")) == 964
    assert len(characters(dataset, "test")) == 659
    assert len(dataset.split_classes("train")) == 964 * 4
    assert len(dataset.split_classes("test")) == 659 * 4


def test_second_load_reads_the_cache_without_decoding_and_identically(omniglot, background):
    dataset = background
    assert torch.equal(dataset.images, omniglot.images)
    assert torch.equal(dataset.labels, omniglot.labels)
    assert dataset.class_names == omniglot.class_names


@pytest.mark.parametrize("member", [
    "images_background/Latin/character01/0683_01.png",
    "images_background/Alphabet_of_the_Magi/character01/0709_07.png",
    "images_evaluation/Angelic/character01/0965_20.png",
])
def test_pixels_match_the_png_exactly(omniglot, omniglot_root, member):
    set_name, alphabet, character, filename = member.split("/")
    drawer = int(filename.removesuffix(".png").split("_")[1])
    class_id = omniglot.class_names.index(f"{alphabet}/{character}/rot000")
    got = omniglot.class_images(class_id)[drawer - 1, 0].numpy()
    want = expected_pixels(omniglot_root / "omniglot" / f"{set_name}.zip", member, 28)
    np.testing.assert_array_equal(got, want)


def test_rotated_classes_are_rotations_of_the_original(omniglot):
    base = omniglot.class_names.index("Latin/character05/rot000")
    original = omniglot.class_images(base)
    for k, angle in enumerate((0, 90, 180, 270)):
        rotated = omniglot.class_images(omniglot.class_names.index(f"Latin/character05/rot{angle:03d}"))
        assert torch.equal(rotated, torch.rot90(original, k, dims=(2, 3)))


# -- small archives in tmp_path ------------------------------------------------------------

def test_image_size_option_on_real_pngs(omniglot_root, tmp_root):
    """A few real characters re-zipped, decoded at 20 px: exact against PIL."""
    real = omniglot_root / "omniglot"
    keep = {"images_background": ("Latin/character01/", "Greek/character02/"),
            "images_evaluation": ("Angelic/character01/",)}
    members = []
    for set_name, prefixes in keep.items():
        with zipfile.ZipFile(real / f"{set_name}.zip") as src, \
                zipfile.ZipFile(tmp_root / f"{set_name}.zip.tmp", "w") as dst:
            for name in src.namelist():
                if any(name.startswith(f"{set_name}/{p}") for p in prefixes):
                    dst.writestr(name, src.read(name))
                    members.append(name)
    (tmp_root / "omniglot").mkdir()
    for set_name in keep:
        (tmp_root / f"{set_name}.zip.tmp").rename(tmp_root / "omniglot" / f"{set_name}.zip")
    dataset = load_dataset("omniglot", tmp_root, image_size=20, split_scheme="background")
    assert dataset.image_shape == (1, 20, 20)
    assert dataset.num_classes == 3 * 4 and len(dataset.images) == 3 * 20 * 4
    member = "images_background/Greek/character02/"
    member = next(m for m in members if m.startswith(member) and m.endswith("_13.png"))
    got = dataset.class_images(dataset.class_names.index("Greek/character02/rot000"))[12, 0].numpy()
    np.testing.assert_array_equal(got, expected_pixels(tmp_root / "omniglot" / "images_background.zip", member, 20))


def test_fake_archives_load_with_vinyals_and_without_rotations(tmp_root, fake_omniglot):
    fake_omniglot(tmp_root / "omniglot")
    dataset = load_omniglot(tmp_root)
    assert {s: len(c) for s, c in dataset.splits.items()} == {"train": 12, "val": 8, "test": 8, "trainval": 20}
    plain = load_omniglot(tmp_root, rotations=False, image_size=10)
    assert plain.num_classes == 7 and plain.image_shape == (1, 10, 10)
    assert {s: len(c) for s, c in plain.splits.items()} == {"train": 3, "val": 2, "test": 2, "trainval": 5}
    assert plain.class_names[0] == "Alpha/character01"


def test_extracted_folders_are_read_like_the_archives(tmp_root, fake_omniglot):
    written = fake_omniglot(tmp_root / "omniglot")
    from_zip = load_omniglot(tmp_root, split_scheme="background")
    for name in ("images_background.zip", "images_evaluation.zip"):
        with zipfile.ZipFile(written[name]) as z:
            z.extractall(tmp_root / "omniglot")
        written[name].unlink()
    from_dirs = load_omniglot(tmp_root, split_scheme="background")
    assert torch.equal(from_dirs.images, from_zip.images) and from_dirs.class_names == from_zip.class_names


def test_damaged_archive_names_the_file(tmp_root, fake_omniglot):
    written = fake_omniglot(tmp_root / "omniglot")
    written["images_evaluation.zip"].write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match=r"images_evaluation\.zip is not a readable zip archive"):
        load_omniglot(tmp_root)


def test_misnamed_archive_names_the_file_and_entry(tmp_root, fake_omniglot):
    written = fake_omniglot(tmp_root / "omniglot")
    # The evaluation archive saved under the background name.
    written["images_background.zip"].write_bytes(written["images_evaluation.zip"].read_bytes())
    with pytest.raises(DataError, match=r"images_background\.zip: unexpected entry 'images_evaluation/Gamma/"):
        load_omniglot(tmp_root)


def test_corrupt_png_names_its_entry(tmp_root, fake_omniglot):
    written = fake_omniglot(tmp_root / "omniglot")
    with zipfile.ZipFile(written["images_background.zip"], "a") as z:
        z.writestr("images_background/Beta/character03/0099_01.png", b"not a png")
    with pytest.raises(DataError, match=r"images_background\.zip:images_background/Beta/character03/0099_01\.png"):
        load_omniglot(tmp_root)


def test_split_file_naming_unknown_class_is_refused(tmp_root, fake_omniglot):
    written = fake_omniglot(tmp_root / "omniglot")
    with open(written["splits/vinyals/test.txt"], "a") as f:
        f.write("Nowhere/character01/rot000\n")
    with pytest.raises(DataError, match=r"test\.txt names 1 classes not in the archives \(first: 'Nowhere/"):
        load_omniglot(tmp_root)


def test_bad_options_are_config_errors(tmp_root):
    with pytest.raises(ConfigError, match="split scheme"):
        load_omniglot(tmp_root, split_scheme="lake")
    with pytest.raises(ConfigError, match="image size"):
        load_omniglot(tmp_root, image_size=2)
