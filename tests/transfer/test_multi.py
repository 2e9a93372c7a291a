"""Multi-teacher transfer: the K-teacher partition, weight soups, sequential chaining, each mode end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import report_findings

from gkt.cli import main
from gkt.core.errors import GktError
from gkt.experiments.multi_teacher import (
    MODES,
    MultiTeacherStudy,
    TransferSetup,
    run_multi_teacher,
    summary_entry,
    table_row,
)
from gkt.models import ArchSpec, Classifier, Preprocess, load_model, weights_hash
from gkt.reporting.multi_teacher import summary_table, write_summary
from gkt.transfer import TransferConfig, base, trainer
from gkt.transfer.base import kl_loss
from gkt.transfer.dp import KLDataPartition
from gkt.transfer.multi import ORDERS, parallel_method, resolve_modes, weight_soup
from gkt.transfer.multi_dp import select_sources
from gkt.transfer.trainer import TransferTrainer
from tests.conftest import make_blobs
from tests.transfer.test_cli_transfer import write_model


def tiny(names: list[str], seed: int, arch: str = "mlp", **kwargs: object) -> Classifier:
    torch.manual_seed(seed)
    kwargs = kwargs or ({"hidden": [16], "dropout": 0.0} if arch == "mlp" else {})
    return Classifier.create(ArchSpec("zoo", arch, len(names), 1, 12, dict(kwargs)), Preprocess(12, 1, (0.4,), (0.3,)),
                             names, name=f"{arch}{seed}")


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_k_teacher_partition_on_hand_made_probabilities() -> None:
    frozen = logits_of([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    teachers = torch.stack([logits_of([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.5, 0.3, 0.2], [0.3, 0.6, 0.1]]),
                            logits_of([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.4, 0.4, 0.2], [0.05, 0.05, 0.9]])], 1)
    labels = torch.tensor([0, 1, 0, 2])
    # true class: teacher 2 (0.8) > teacher 1 (0.7) > student; student 0.7 wins; tie 0.5 keeps the student;
    # teacher 2's 0.9 beats the student's 0.8
    assert select_sources(frozen, teachers, labels).tolist() == [2, 0, 0, 2]
    # maximum probability: sample 1 goes to teacher 2 (0.8 > 0.7) whatever the label
    assert select_sources(frozen, teachers, None).tolist() == [2, 2, 0, 2]


def test_k_teacher_partition_with_one_teacher_is_kl_dp() -> None:
    g = torch.Generator().manual_seed(0)
    frozen, teacher = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g)
    labels = torch.randint(0, 5, (64,), generator=g)
    expected = KLDataPartition().teacher_mask(teacher, frozen, labels)
    assert torch.equal(select_sources(frozen, teacher[:, None], labels) == 1, expected)


def test_k_teacher_loss_uses_each_samples_selected_target() -> None:
    from gkt.transfer import Step, create_method

    g = torch.Generator().manual_seed(1)
    student, frozen, teachers = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, 3, 4, generator=g)
    labels = torch.randint(0, 4, (6,), generator=g)
    method = create_method("kl-dp-multi", {"temperature": 2.0})
    step = Step(student, {base.FROZEN_LOGITS: frozen, base.TEACHERS_LOGITS: teachers}, torch.arange(6), g, labels=labels)
    source = select_sources(frozen, teachers, labels)
    target = torch.cat([frozen[:, None], teachers], 1)[torch.arange(6), source]
    step.targets = method.prepare_targets(step.targets, labels)  # as the trainer does
    assert torch.allclose(method(step)["kl"], kl_loss(student, target, 2.0))
    assert not create_method("kl-dp-multi-unsup").uses_labels


def test_weight_soup_averages_weights_and_keeps_integer_buffers() -> None:
    names = ["a", "b", "c"]
    models = [tiny(names, seed, "cnn", channels=[4, 8]) for seed in (1, 2, 3)]
    for k, model in enumerate(models):
        for name, value in model.net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                value.fill_(k + 5)
    soup = weight_soup(models)
    states = [m.net.state_dict() for m in models]
    for name, value in soup.net.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert value.dtype == torch.int64 and value.item() == 5  # the first model's, never an average
        else:
            assert torch.allclose(value, (states[0][name] + states[1][name] + states[2][name]) / 3)
    assert weights_hash(models[0]) != weights_hash(soup) and len(soup.provenance["soup"]) == 3
    with pytest.raises(GktError, match="needs every model to have the student's architecture"):
        weight_soup([models[0], tiny(names, 4)], reference=models[0])
    with pytest.raises(GktError, match="needs every model to have the student's architecture"):
        weight_soup([tiny(names, 5, hidden=[8], dropout=0.0)], reference=tiny(names, 6))


def test_orders_and_modes() -> None:
    accs = [0.8, 0.9, 0.7]
    assert ORDERS["given"](accs) == [0, 1, 2] and ORDERS["asc"](accs) == [2, 0, 1] and ORDERS["desc"](accs) == [1, 0, 2]
    assert resolve_modes(["all"], "kl-dp") == ["sequential", "parallel", "soup"]
    assert resolve_modes(["all"], "kl") == ["sequential", "soup"]  # plain KL has no parallel form (Table 9)
    assert resolve_modes(["soup", "sequential"], "kl") == ["sequential", "soup"]
    assert parallel_method("kl-dp-unsup") == "kl-dp-multi-unsup" and parallel_method("kl-dp-multi") == "kl-dp-multi"
    with pytest.raises(GktError, match="kl distils from one teacher at a time"):
        resolve_modes(["parallel"], "kl")
    with pytest.raises(GktError, match="unknown multi-teacher mode"):
        resolve_modes(["serial"], "kl-dp")


@pytest.fixture
def setup(tmp_path: Path) -> TransferSetup:
    config = TransferConfig(method="kl-dp", epochs=2, lr=0.05, batch_size=16, seed=3)
    return TransferSetup(make_blobs(n_per_class=24, seed=0), make_blobs(n_per_class=10, seed=1), config,
                         torch.device("cpu"), tmp_path / "cache")


def test_bad_teacher_sets(setup: TransferSetup) -> None:
    names = setup.transfer_set.class_names
    student, teacher = tiny(names, 1), tiny(names, 2)
    with pytest.raises(GktError, match=r"teacher 2 \(mlp2\) is the same model as teacher 1"):
        MultiTeacherStudy(student, [teacher, teacher.clone()], setup)
    with pytest.raises(GktError, match="class names differ"):
        MultiTeacherStudy(student, [teacher, tiny(["x", "y", "z", "w"], 3)], setup)
    with pytest.raises(GktError, match="predicts 3 classes"):
        MultiTeacherStudy(student, [tiny(["a", "b", "c"], 3)], setup)
    with pytest.raises(GktError, match="unknown teacher order"):
        MultiTeacherStudy(student, [teacher], setup, order="random")


def test_sequential_chaining_refreshes_the_frozen_copy(setup: TransferSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    names = setup.transfer_set.class_names
    student, teachers = tiny(names, 1), [tiny(names, 2, hidden=[8], dropout=0.0), tiny(names, 3, hidden=[24], dropout=0.0)]
    frozen_hashes = []
    init = TransferTrainer.__init__

    def recording_init(self: TransferTrainer, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        frozen_hashes.append(weights_hash(self.task.frozen))

    monkeypatch.setattr(TransferTrainer, "__init__", recording_init)
    study = MultiTeacherStudy(student, teachers, setup, order="desc")
    result = study.sequential()
    order = ORDERS["desc"](study.acc_teachers)
    first = load_model(f"file:{result.steps[0]['run']}/student")
    assert frozen_hashes == [weights_hash(student), weights_hash(first)]  # step 2 starts from step 1's result
    assert [s["teacher"] for s in result.steps] == [teachers[k].name for k in order]
    s1, s2 = result.steps
    assert s2["delta_prev"] == pytest.approx(s2["acc"] - s1["acc"])
    assert s2["delta_transf"] == pytest.approx(s1["delta_transf"] + s2["delta_prev"])
    assert result.metrics["delta_transf"] == s2["delta_transf"]
    assert s2["delta_transf"] == pytest.approx(s2["knowledge_gain"] - s2["knowledge_loss"])
    # the first step is the single-teacher run of the first teacher, reused from the cache
    runs_before = len(frozen_hashes)
    singles = study.single()
    assert len(frozen_hashes) == runs_before + 1  # only the second teacher's single run is new
    assert singles[order[0]]["run"] == s1["run"]


def test_each_mode_end_to_end(setup: TransferSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = setup.transfer_set.class_names
    student = tiny(names, 1)
    teachers = [tiny(names, 2, hidden=[8], dropout=0.0), tiny(names, 3, "linear"), tiny(names, 4, hidden=[32], dropout=0.0)]
    out = tmp_path / "out"
    study = MultiTeacherStudy(student, teachers, setup)
    singles, results = run_multi_teacher(study, list(MODES), out)
    assert [r["teacher"] for r in singles] == [t.name for t in teachers]
    assert set(results) == {"sequential", "parallel", "soup"}
    assigned = results["parallel"].details["assigned"]
    assert sum(assigned.values()) == len(setup.transfer_set) and len(assigned) == 4
    assert results["parallel"].details["method"] == "kl-dp-multi"
    # soup ingredients are the single-teacher runs
    assert [s["run"] for s in results["soup"].steps] == [r["run"] for r in singles]
    for mode in MODES:
        final = json.loads((out / mode / "final.json").read_text())
        assert final["mode"] == mode and -1 <= final["delta_transf"] <= 1
        assert load_model(final["checkpoint"]).arch == student.arch
    assert (out / "sequential" / "chain.png").read_bytes()[:4] == b"\x89PNG"
    row = table_row(singles, results)
    assert row["single_min"] <= row["single_mean"] <= row["single_max"]
    assert row["sequential_minus_best_single"] == pytest.approx(row["sequential"] - row["single_max"])
    entry = summary_entry(student, study.acc_student, [t.name for t in teachers], "kl-dp", {3: row, 4: row})
    assert entry["aggregate"]["soup"]["std"] == 0 and entry["aggregate"]["soup"]["n"] == 2
    write_summary([entry], out)
    assert "single mean" in (out / "summary.md").read_text() and (out / "summary.csv").is_file()
    assert "± 0.00" in summary_table([entry])

    # a second study over the same setup trains nothing: every run comes from the cache
    monkeypatch.setattr(trainer.TransferTrainer, "train_epoch", lambda self: pytest.fail("retrained a cached run"))
    again = MultiTeacherStudy(student, teachers, setup)
    assert again.parallel().metrics == results["parallel"].metrics
    assert again.soup().metrics == results["soup"].metrics


def test_cli_multi_teacher(tmp_path: Path, tiny_fmnist_dir: Path, capsys: pytest.CaptureFixture,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    student = write_model(tmp_path / "student", 1)
    teachers = [write_model(tmp_path / f"teacher{k}", k + 2, hidden=8 * (k + 1)) for k in range(2)]
    common = ["transfer", "--data-dir", str(tiny_fmnist_dir), "--fraction", "1.0", "--batch-size", "8", "--lr", "0.05",
              "--epochs", "1", "--threads", "1", "--student", student]
    out = tmp_path / "runs"
    code = main([*common, "--out", str(out), "--teacher", teachers[0], "--teacher", teachers[1], "--multi", "all",
                 "--seeds", "0", "1", "--order", "asc"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "sequential" in printed and "soup" in printed and "assigned" in printed and "seq − best single" in printed
    run_dir = next(out.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary[0]["seeds"] == [0, 1] and set(summary[0]["per_seed"]["0"]) >= {"sequential", "parallel", "soup"}
    for name in ("summary.csv", "summary.md", "seed0/single.csv", "seed1/sequential/chain.png", "seed0/parallel/final.json"):
        assert (run_dir / name).is_file(), name
    (finding,) = report_findings(run_dir)  # one student: its modes in points, mean ± std over seeds
    agg = summary[0]["aggregate"]
    for mode, label in (("sequential", "sequential"), ("parallel", "parallel"), ("soup", "model soup")):
        mean, std = 100 * agg[mode]["mean"], 100 * agg[mode]["std"]
        assert f"{label} {mean:+.2f} ± {std:.2f} pp".replace("+0.00", "0.00").replace("-0.00", "0.00") in finding
    # the Python call with the CLI's options writes the same summary (a fresh store: nothing reused)
    import gkt

    monkeypatch.setenv("GKT_HOME", str(tmp_path / "api-home"))
    api = gkt.transfer(student=student, teacher=teachers, multi=["all"], seeds=[0, 1], order="asc",
                       data_dir=str(tiny_fmnist_dir), fraction=1.0, batch_size=8, lr=0.05, epochs=1, threads=1,
                       out=tmp_path / "api-runs", say=lambda line: None)
    assert json.loads((api.run_dir / "summary.json").read_text()) == summary
    assert api.summary["aggregate"] == summary[0]["aggregate"]
    # bad input: duplicates, plain KL in parallel, several teachers without a mode
    assert main([*common, "--out", str(out), "--teacher", teachers[0], "--teacher", teachers[0], "--multi", "soup"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main([*common, "--out", str(out), "--teacher", teachers[0], "--teacher", teachers[1], "--multi", "parallel",
                 "--method", "kl"]) == 2
    assert "distils from one teacher at a time" in capsys.readouterr().err
    assert main([*common, "--out", str(out), "--teacher", teachers[0], "--teacher", teachers[1]]) == 2
    assert "--multi" in capsys.readouterr().err


def test_run_cache_recovers_from_a_kill_before_final_json(setup: TransferSetup) -> None:
    """A run killed after saving its student but before ``final.json`` runs again (from its last epoch's
    state) instead of refusing to overwrite the student; a run directory deleted from the cache runs again."""
    names = setup.transfer_set.class_names
    student, teachers = tiny(names, 1), [tiny(names, 2, hidden=[8], dropout=0.0)]
    first = MultiTeacherStudy(student, teachers, setup).single()[0]
    run_dir = Path(first["run"])
    (run_dir / "final.json").unlink()
    again = MultiTeacherStudy(student, teachers, setup).single()[0]
    assert again == first and (run_dir / "final.json").is_file()
    import shutil

    shutil.rmtree(run_dir)
    assert MultiTeacherStudy(student, teachers, setup).single()[0] == first
    for damage in ({"final.json": "{garbage"}, {"metrics.csv": "epoch,acc\nx,y\n"}, {"student.safetensors": "xx"}):
        for name, text in damage.items():  # a damaged cached run runs again instead of failing the command
            (run_dir / name).write_text(text)
        assert MultiTeacherStudy(student, teachers, setup).single()[0] == first, damage


def test_run_cache_key_follows_the_images_not_only_the_labels(setup: TransferSetup) -> None:
    """Changed pixels with the same names, shapes and labels are other data: the cached run is not reused."""
    from dataclasses import replace

    from gkt.data.datasets import TensorImageDataset
    from gkt.experiments.multi_teacher import TransferRuns

    names = setup.transfer_set.class_names
    student, teacher = tiny(names, 1), tiny(names, 2, hidden=[8], dropout=0.0)
    test = setup.test_set
    pixels = test.images.clone()
    pixels[0, 0, 0, 0] ^= 1
    changed = replace(setup, test_set=TensorImageDataset(test.name, pixels, test.labels, test.class_names))
    assert changed.test_set.fingerprint() == test.fingerprint()  # names, shape, labels: the same
    key, changed_key = (TransferRuns(s).run_dir(TransferRuns(s).job(student, [teacher], s.config))
                        for s in (setup, changed))
    assert key != changed_key
