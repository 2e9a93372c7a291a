"""The one data-spec language, BASE[CLASSES]@DOMAIN, parsed and loaded the same way for every verb."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gkt.core.errors import GktError
from gkt.data.spec import DataSpec, check_data_dir, load_split, parse_class_list


@pytest.mark.parametrize(("text", "expected"), [
    ("fmnist", DataSpec("fmnist")),
    ("fmnist[5-9]", DataSpec("fmnist", classes=(5, 6, 7, 8, 9))),
    ("digits[1,3]", DataSpec("digits", classes=(1, 3))),
    ("fmnist[0-2,8]@edges", DataSpec("fmnist", domain="edges", classes=(0, 1, 2, 8))),
    ("folder:/data/pets[cat,dog]", DataSpec("folder", "/data/pets", classes=("cat", "dog"))),
    ("folder:/x[1]/y", DataSpec("folder", "/x[1]/y")),  # brackets inside a path are part of it
    ("folder:/data/pets@invert", DataSpec("folder", "/data/pets", domain="invert")),
    ("folder:/home/me@lab/pets", DataSpec("folder", "/home/me@lab/pets")),  # an '@' inside a path
    ("hf:/data/me@lab/pets[cat]@edges", DataSpec("hf", "/data/me@lab/pets", domain="edges", classes=("cat",))),
])
def test_parse(text: str, expected: DataSpec) -> None:
    assert DataSpec.parse(text) == expected
    assert DataSpec.parse(str(expected)) == expected  # the canonical text parses back


@pytest.mark.parametrize(("text", "message"), [
    ("fmnist@edges[0-4]", "class list comes before the domain"),
    ("fmnist[0-4]@sepia", "unknown domain 'sepia'"),
    ("fmnist@edgs", r"did you mean 'edges'"),
    ("fmnist[]", "empty entry"),
    ("fmnist[3,,4]", "empty entry"),
    ("fmnist[9-5]", "runs backwards"),
    ("[0-4]", "needs a data set before it"),
    ("mnist[0-4]", r"unknown data spec 'mnist\[0-4\]': unknown data set 'mnist' \(did you mean 'fmnist'"),
    ("folder:", "give the folder"),
    ("fmnist@", "BASE@DOMAIN"),
])
def test_bad_specs_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(GktError, match=message):
        DataSpec.parse(text)


def test_an_existing_folder_named_with_an_at_sign(tmp_path: Path) -> None:
    (tmp_path / "pets@v2").mkdir()
    assert DataSpec.parse(f"folder:{tmp_path / 'pets@v2'}") == DataSpec("folder", str(tmp_path / "pets@v2"))
    with pytest.raises(GktError, match="unknown domain 'v3'"):  # no such folder: read as a domain, as before
        DataSpec.parse(f"folder:{tmp_path / 'pets@v3'}")
    pets = str(tmp_path / "pets@v2")  # with a class list, options or a domain after it too
    assert DataSpec.parse(f"folder:{pets}[cat,dog]") == DataSpec("folder", pets, classes=("cat", "dog"))
    assert DataSpec.parse(f"hf:{pets}?label=fine") == DataSpec("hf", f"{pets}?label=fine")
    assert DataSpec.parse(f"hf:{pets}?label=fine[cat]@edges") == DataSpec("hf", f"{pets}?label=fine", "edges", ("cat",))


def test_hf_options_after_a_directory_named_with_a_question_mark(tmp_path: Path) -> None:
    from gkt.data.hf import parse_hf_path

    odd = tmp_path / "what?dir"
    odd.mkdir()
    assert parse_hf_path(str(odd)) == (str(odd), {})
    assert parse_hf_path(f"{odd}?label=fine") == (str(odd), {"label": "fine"})
    assert parse_hf_path("org/name?test=validation") == ("org/name", {"test": "validation"})


def test_with_classes_merges_a_separate_class_option() -> None:
    assert DataSpec.parse("digits").with_classes("0-4") == DataSpec.parse("digits[0-4]")
    assert DataSpec.parse("digits[1]").with_classes(None) == DataSpec.parse("digits[1]")
    with pytest.raises(GktError, match="give the classes once"):
        DataSpec.parse("digits[1]").with_classes("2")
    assert parse_class_list("T-shirt/top, 3-4") == ("T-shirt/top", 3, 4)


def test_quoted_class_names_hold_commas_and_brackets(tmp_path: Path) -> None:
    """ImageNet's class names hold commas ("tench, Tinca tinca"): quoted, they select by name, and a spec's
    text reads back as the same spec."""
    assert parse_class_list('"tench, Tinca tinca", goldfish,3, "7"') == ("tench, Tinca tinca", "goldfish", 3, "7")
    assert DataSpec.parse("folder:/d[yellow lady's slipper,dog's]").classes == ("yellow lady's slipper", "dog's")
    names = ("tench, Tinca tinca", "cock[erel]", 'say "hi"', "Kid's \"toy\"", "12", 4, "b-2", "5\" screen")
    spec = DataSpec("folder", "/data", "invert", names)
    assert DataSpec.parse(str(spec)) == spec
    with pytest.raises(GktError, match="unclosed quote in the class list"):
        DataSpec.parse('folder:/data["open,dog]')
    for bad, message in (('"open, ended', "unclosed quote"), ('"a" b', "text after a quoted class name")):
        with pytest.raises(GktError, match=message):
            parse_class_list(bad)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("tench, Tinca tinca", "goldfish", "great white shark"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / split / name / "a.png")
    picked = load_split(f'folder:{tmp_path}["great white shark","tench, Tinca tinca"]', "val", image_size=8)
    assert picked.class_names == ["great white shark", "tench, Tinca tinca"] and len(picked) == 2


def test_classes_then_domain_on_fmnist(tiny_fmnist_dir: Path) -> None:
    full = load_split("fmnist", "test", data_dir=str(tiny_fmnist_dir))
    sub = load_split("fmnist[7,2]@invert", "test", data_dir=str(tiny_fmnist_dir))
    keep = (full.labels == 7) | (full.labels == 2)
    assert sub.class_names == [full.class_names[7], full.class_names[2]]
    assert torch.equal(sub.labels, (full.labels[keep] == 2).long())  # relabelled in the given order
    assert torch.equal(sub.images, 255 - full.images[keep]) and sub.name.endswith("@invert")
    by_name = load_split(f"fmnist[{full.class_names[7]},{full.class_names[2].lower()}]@invert", "test",
                         data_dir=str(tiny_fmnist_dir))
    assert torch.equal(by_name.images, sub.images) and by_name.class_names == sub.class_names
    with pytest.raises(GktError, match="no class named 'Sneakers'"):
        load_split("fmnist[Sneakers]", "test", data_dir=str(tiny_fmnist_dir))
    with pytest.raises(GktError, match="must name distinct classes"):
        load_split("fmnist[3,12]", "test", data_dir=str(tiny_fmnist_dir))


def test_digits_classes_and_folder_class_names(tmp_path: Path) -> None:
    from PIL import Image

    digits = load_split("digits[1,3]", "train", val_fraction=0)
    assert digits.class_names == ["1", "3"] and set(digits.labels.tolist()) == {0, 1}
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        for name in ("bird", "cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(tmp_path / split / name / f"{i}.png")
    pets = load_split(f"folder:{tmp_path}[dog,cat]@invert", "test", image_size=6)
    assert pets.class_names == ["dog", "cat"] and pets.labels.tolist() == [1, 0]
    assert pets.load(torch.tensor([0])).shape == (1, 3, 6, 6)


@pytest.mark.parametrize("specs", [["fmnist"], ["fmnist[0-4]@edges"], ["fmnist", "digits"], ["fashion-mnist"]])
def test_data_dir_read_by_fashion_mnist_specs(specs: list[str]) -> None:
    check_data_dir("/data/fmnist", specs)
    check_data_dir(None, ["digits", "folder:/x"])  # nothing given: nothing to check


@pytest.mark.parametrize(("specs", "message"), [
    (["digits"], r"this command's data \(digits\) does not read it: drop --data-dir"),
    (["folder:/pets", "hf:/set"], r"\(folder:/pets, hf:/set\) does not read it"),
    (["fmnist:/other"], r"--data-dir /data/fmnist and the data spec fmnist:/other both name"),
])
def test_data_dir_no_spec_reads_is_an_error(specs: list[str], message: str) -> None:
    with pytest.raises(GktError, match=message):
        check_data_dir("/data/fmnist", specs)
