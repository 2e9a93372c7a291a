"""Class maps: automatic name matching, a 20-class teacher on 10 student classes, clear errors, and
``gkt transfer --class-map``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gkt.cli import main
from gkt.core.errors import GktError
from gkt.data.fmnist import FASHION_MNIST_CLASSES
from gkt.models import (
    ArchSpec,
    Classifier,
    DataInfo,
    Preprocess,
    apply_class_map,
    check_label_space,
    load_model,
    save_checkpoint,
    weights_hash,
)

STUDENT = [f"s{i}" for i in range(10)]


def model(names: list[str], seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier.create(ArchSpec("zoo", "mlp", len(names), 1, 14, {"hidden": [8]}),
                             Preprocess(14, 1, (0.5,), (0.3,)), names).eval()


def raw(n: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 14, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_permuted_names_auto_match() -> None:
    teacher = model(list(reversed(STUDENT)))
    mapped = apply_class_map(teacher, STUDENT)
    check_label_space(mapped, STUDENT)
    x = raw()
    with torch.no_grad():
        assert torch.allclose(mapped(x), teacher(x).flip(-1))
        assert torch.equal(mapped.features(x), teacher.features(x))
    assert mapped.provenance["class_map"]["s0"] == ["s0"]
    assert weights_hash(mapped) != weights_hash(teacher)  # cached outputs of the two never mix


def test_case_only_difference_keeps_the_network() -> None:
    teacher = model([n.upper() for n in STUDENT])
    mapped = apply_class_map(teacher, STUDENT)
    assert mapped.class_names == STUDENT and mapped.net is teacher.net and mapped.arch == teacher.arch
    same = model(STUDENT)
    assert apply_class_map(same, STUDENT) is same


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_twenty_class_teacher_mapped_to_ten_student_classes(tmp_path: Path, suffix: str) -> None:
    teacher_names = [f"t{i}" for i in range(20)]
    teacher = model(teacher_names)
    # s0..s8 take two teacher classes each (names, one case-insensitive, or an index); s9 takes t19 alone
    mapping = {f"s{i}": [f"t{2 * i}", f"T{2 * i + 1}" if i % 2 else 2 * i + 1] for i in range(9)} | {"s9": "t19"}
    path = tmp_path / f"map{suffix}"
    if suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(mapping))
    else:
        path.write_text(json.dumps(mapping))
    info = DataInfo(tuple(STUDENT), 1, 14, (0.5,), (0.3,))
    spec = f"file:{save_checkpoint(teacher, tmp_path / 'teacher')}"
    with pytest.raises(GktError, match="predicts 20 classes"):
        load_model(spec, info)
    mapped = load_model(spec, info, class_map=path)
    x = raw()
    with torch.no_grad():
        t = teacher(x)
        expected = torch.cat([torch.logsumexp(t[:, :18].view(-1, 9, 2), -1), t[:, 19:]], 1)
        assert torch.allclose(mapped(x), expected, atol=1e-6)
    assert mapped.provenance["class_map"]["s9"] == ["t19"] and mapped.provenance["class_map"]["s1"] == ["t2", "t3"]
    # the mapped teacher is a checkpointable classifier of its own
    again = load_model(f"file:{save_checkpoint(mapped, tmp_path / 'mapped')}", info)
    assert torch.equal(again(x), mapped(x)) and again.arch.source == "class_map"


def test_unmatched_classes_are_named() -> None:
    teacher = model([f"t{i}" for i in range(10)])
    with pytest.raises(GktError, match=r"cannot match 10 of 10 target classes.*s0 → 's0'.*s9 → 's9'"):
        apply_class_map(teacher, STUDENT)
    with pytest.raises(GktError, match=r"cannot match 2 of 10.*s3 → 'cat'.*s4 → index 12"):
        apply_class_map(teacher, STUDENT, {f"s{i}": f"t{i}" for i in range(10)} | {"s3": "cat", "s4": 12})
    with pytest.raises(GktError, match=r"cannot match 10 of 10 target classes to the model's 20 classes"):
        apply_class_map(model([f"t{i}" for i in range(20)]), STUDENT)
    with pytest.raises(GktError, match=r"classes the target label space does not have: \['s99'\]"):
        apply_class_map(teacher, STUDENT, {"s99": "t0"})
    with pytest.raises(GktError, match=r"model classes \['t0'\] to several"):
        apply_class_map(teacher, STUDENT, {f"s{i}": f"t{i}" for i in range(10)} | {"s1": ["t0", "t1"]})
    with pytest.raises(GktError, match=r"ambiguous: indices \[0, 1\]"):
        apply_class_map(model(["crane", "crane"] + [f"t{i}" for i in range(8)]), STUDENT[:1], {"s0": "crane"})


def test_a_map_for_the_whole_data_set_serves_a_class_selection() -> None:
    """Entries for data classes a class list (``DATA[s2,s5]``) left out are unused; typos still fail."""
    teacher = model([f"t{i}" for i in range(10)])
    whole = {f"s{i}": f"t{i}" for i in range(10)}
    mapped = apply_class_map(teacher, ["s2", "s5"], whole, data_classes=STUDENT)
    assert mapped.class_names == ["s2", "s5"] and mapped.provenance["class_map"] == {"s2": ["t2"], "s5": ["t5"]}
    with pytest.raises(GktError, match=r"does not have: \['s2'\]"):  # without the data's classes: as before
        apply_class_map(teacher, ["s5"], {"s5": "t5", "s2": "t2"})
    with pytest.raises(GktError, match=r"does not have: \['s99'\]"):
        apply_class_map(teacher, ["s2", "s5"], whole | {"s99": "t0"}, data_classes=STUDENT)


def test_cli_transfer_with_class_map(tmp_path: Path, tiny_fmnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    student = save_checkpoint(model(FASHION_MNIST_CLASSES, seed=1), tmp_path / "student")
    teacher_names = [f"{n} (teacher)" for n in FASHION_MNIST_CLASSES] + [f"other{i}" for i in range(10)]
    teacher = save_checkpoint(model(teacher_names, seed=2), tmp_path / "teacher")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({n: [f"{n} (teacher)", f"other{i}"] for i, n in enumerate(FASHION_MNIST_CLASSES)}))
    common = ["transfer", "--data-dir", str(tiny_fmnist_dir), "--fraction", "1.0", "--batch-size", "8", "--epochs", "1",
              "--out", str(tmp_path / "runs"), "--threads", "1", "--student", f"file:{student}",
              "--teacher", f"file:{teacher}"]
    assert main(common) == 2
    assert "give a class map" in capsys.readouterr().err
    assert main([*common, "--class-map", str(mapping)]) == 0
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if (d / "final.json").is_file()]
    resolved = json.loads((run_dir / "resolved_config.json").read_text())
    assert resolved["class_map"]["T-shirt/top"] == ["T-shirt/top (teacher)", "other0"]


def test_cli_analyze_with_class_map(tmp_path: Path, tiny_fmnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    plain = save_checkpoint(model(FASHION_MNIST_CLASSES, seed=1), tmp_path / "plain")
    reversed_names = save_checkpoint(model(FASHION_MNIST_CLASSES[::-1], seed=2), tmp_path / "reversed")
    renamed = save_checkpoint(model([f"c{i}" for i in range(10)], seed=3), tmp_path / "renamed")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("\n".join(f"'{n}': c{i}" for i, n in enumerate(FASHION_MNIST_CLASSES)))
    common = ["analyze", "--data-dir", str(tiny_fmnist_dir), "--no-random-baseline", "--no-semantic", "--no-figures",
              "--out", str(tmp_path / "runs"), "--threads", "1", "--models", f"file:{plain}"]
    assert main([*common, f"file:{reversed_names}"]) == 0  # order-only difference: matched by name
    assert main([*common, f"file:{renamed}"]) == 2
    assert "give a class map" in capsys.readouterr().err
    assert main([*common, f"file:{renamed}", "--class-map", str(mapping)]) == 0


def test_a_map_entry_the_model_does_not_need_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    """A model that has the target class itself uses it when the map's entry names none of its classes (a map
    written for another vocabulary); since a typo in the map lands there too, it is said, once per model."""
    student_named = model(list(STUDENT))
    with caplog.at_level("WARNING", logger="gkt.models.class_map"):
        apply_class_map(student_named, STUDENT, {"s3": "no such class"})
    assert "1 of its entries name no class of this model (e.g. s3 → 'no such class')" in caplog.text


def test_wordnet_id_folders_aligned_to_an_imagenet_model_are_announced_once(caplog: pytest.LogCaptureFixture) -> None:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    imagenet = model(list(_IMAGENET_CATEGORIES))  # torchvision's names; the data is named by WordNet ids
    imagenet.name = "announced-imagenet-model"
    wnids = ["n01440764", "n02102040"]
    with caplog.at_level("INFO", logger="gkt.models.class_map"):
        mapped = apply_class_map(imagenet, wnids)
        apply_class_map(imagenet, wnids)
        apply_class_map(imagenet, wnids, {"n01440764": "tench", "n02102040": "English springer"})  # a map: no line
    assert mapped.provenance["class_map"] == {"n01440764": ["tench"], "n02102040": ["English springer"]}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "2 classes (WordNet ids) matched by name to 2 of its 1000 classes (n01440764 → tench" in lines[0]
