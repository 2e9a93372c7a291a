"""``gkt transfer`` end to end on tiny data: outputs, resume, failures, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_idx

from gkt.cli import main
from gkt.core.errors import GktError
from gkt.data.fmnist import FASHION_MNIST_CLASSES, read_idx
from gkt.models import ArchSpec, Classifier, Preprocess, load_model, save_checkpoint, weights_hash
from gkt.transfer import METHODS, TransferTrainer
from gkt.transfer.kl import KLDist


def write_model(path: Path, seed: int, names: list[str] = FASHION_MNIST_CLASSES, hidden: int = 16) -> str:
    torch.manual_seed(seed)
    model = Classifier.create(ArchSpec("zoo", "mlp", len(names), 1, 14, {"hidden": [hidden], "dropout": 0.2}),
                              Preprocess(14, 1, (0.5,), (0.3,)), names)
    save_checkpoint(model, path)
    return f"file:{path}"


@pytest.fixture
def models(tmp_path: Path) -> tuple[str, str]:
    return write_model(tmp_path / "student", 1), write_model(tmp_path / "teacher", 2, hidden=8)


def run(tmp_path: Path, fmnist: Path, *extra: str) -> tuple[int, Path | None]:
    out = tmp_path / "runs"
    before = set(out.iterdir()) if out.exists() else set()
    code = main(["transfer", "--data-dir", str(fmnist), "--fraction", "1.0", "--batch-size", "8", "--lr", "0.05",
                 "--out", str(out), "--threads", "1", *extra])
    new = sorted(set(out.iterdir()) - before) if out.exists() else []
    return code, (new[0] if new else None)


def test_end_to_end(tmp_path: Path, tiny_fmnist_dir: Path, models: tuple[str, str],
                    capsys: pytest.CaptureFixture) -> None:
    student, teacher = models
    student_hash = weights_hash(load_model(student))
    code, run_dir = run(tmp_path, tiny_fmnist_dir, "--student", student, "--teacher", teacher, "--method", "kl-dp",
                        "--epochs", "2", "--augment", "flip")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Δtransf" in out and "partition on the transfer set" in out and "transfer rate" in out
    for name in ("config.json", "resolved_config.json", "metrics.csv", "final.json", "plot.png", "state.pt",
                 "student.safetensors", "student.json", "log.txt"):
        assert (run_dir / name).is_file(), name
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,acc,delta_transf") and len(lines) == 4  # header + epochs 0, 1, 2
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "ok" and final["method"] == "kl-dp" and 0 <= final["knowledge_gain"] <= 1
    assert set(final["partition_quality"]) == {"pos_flips_to_teacher", "neg_flips_to_teacher", "samples_to_teacher"}
    transferred = load_model(final["checkpoint"])
    assert transferred.provenance["transfer"]["teacher"] == "teacher"  # its display name: the file's stem
    assert weights_hash(load_model(student)) == student_hash  # the input was not overwritten
    assert (run_dir / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(run_dir)]) == 0
    _check_report_opens_with_findings(run_dir, final, out)


def _check_report_opens_with_findings(run_dir: Path, final: dict, terminal: str) -> None:
    """The report's first section is Findings, in points as the terminal printed them (final.json × 100),
    and its plot is shown (inlined in the HTML, linked from the Markdown)."""
    import re

    md, page = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    assert re.findall(r"^## (.+)$", md, re.M)[0] == "Findings"
    assert re.findall(r"<h2>(.+?)</h2>", page)[0] == "Findings"
    first = md.split("## Findings\n\n- ")[1].splitlines()[0]
    delta, before, after, teacher = (100 * final[k] for k in ("delta_transf", "acc_student_before", "acc", "acc_teacher"))
    assert first.startswith(f"Δtransf {delta:+.2f} pp: " if round(delta, 2) else "Δtransf 0.00 pp: ")
    assert f"{before:.2f}% → {after:.2f}% (teacher {teacher:.2f}%)" in first
    assert f"knowledge gain {100 * final['knowledge_gain']:.2f} pp, knowledge loss {100 * final['knowledge_loss']:.2f} pp" \
        in first
    assert first.replace("\\", "") in terminal  # the terminal printed the same sentence
    figures = page.split("<h2>Key figures</h2>")[1].split("<h2>")[0]
    assert 'alt="plot.png" src="data:image/png;base64,' in figures and "![plot.png](<plot.png>)" in md
    assert "-0.00" not in md and "nan" not in md.split("## Configuration")[0]


@pytest.mark.parametrize("method", ["xekl-mcl", "crd"])
def test_resume_gives_the_same_final_weights(tmp_path: Path, tiny_fmnist_dir: Path, models: tuple[str, str],
                                             monkeypatch: pytest.MonkeyPatch, method: str,
                                             capsys: pytest.CaptureFixture) -> None:
    student, teacher = models
    args = ("--student", student, "--teacher", teacher, "--method", method, "--epochs", "3", "--augment", "flip",
            "crop", "--seed", "4")
    code, full = run(tmp_path, tiny_fmnist_dir, *args)
    assert code == 0
    original = TransferTrainer.train_epoch

    def interrupted(self: TransferTrainer) -> dict[str, float]:
        if self.epoch == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(TransferTrainer, "train_epoch", interrupted)
    code, broken = run(tmp_path, tiny_fmnist_dir, *args)
    assert code == 130 and not (broken / "student.safetensors").exists()
    monkeypatch.setattr(TransferTrainer, "train_epoch", original)
    code, _ = run(tmp_path, tiny_fmnist_dir, "--resume", str(broken), "--seed", "99")
    assert code == 2  # an option that conflicts with the run's is refused, not silently overridden
    kept = {f: f.read_bytes() for f in tmp_path.glob("teacher.*")}
    for f in kept:
        f.unlink()
    write_model(tmp_path / "teacher", 3, hidden=8)  # the teacher's spec now names other weights
    code, _ = run(tmp_path, tiny_fmnist_dir, "--resume", str(broken))
    assert code == 2 and "started with other inputs than teacher" in capsys.readouterr().err  # no mixing
    for f, raw in kept.items():
        f.write_bytes(raw)
    other_data = tmp_path / "other-fmnist"
    shutil.copytree(tiny_fmnist_dir, other_data)
    images = other_data / "train-images-idx3-ubyte.gz"
    write_idx(images, 255 - read_idx(images))  # the same names, labels and shapes; other images
    code = main(["transfer", "--resume", str(broken), "--data-dir", str(other_data), "--out", str(tmp_path / "runs"),
                 "--threads", "1"])
    assert code == 2 and "the data (its transfer or test images)" in capsys.readouterr().err
    import gkt

    with pytest.raises(GktError, match=r"other settings than lr 0\.01 \(the run used 0\.05\); resuming"):
        gkt.transfer(student, teacher, method=method, epochs=3, augment=["flip", "crop"], seed=4, lr=0.01,  # Python
                     fraction=1.0, batch_size=8, data_dir=str(tiny_fmnist_dir), resume=broken, out=tmp_path / "api",
                     threads=1, say=lambda line: None)
    code, resumed = run(tmp_path, tiny_fmnist_dir, "--resume", str(broken))
    assert code == 0
    a = load_model(f"file:{full / 'student'}").net.state_dict()
    b = load_model(f"file:{resumed / 'student'}").net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "final.json").read_text())["acc"] == json.loads((full / "final.json").read_text())["acc"]
    assert len((resumed / "metrics.csv").read_text().splitlines()) == 5  # history carried over: header + epochs 0-3
    recorded = json.loads((resumed / "config.json").read_text())  # the options the run went on with
    assert (recorded["student"], recorded["teacher"], recorded["method"]) == (student, [teacher], method)
    code, _ = run(tmp_path, tiny_fmnist_dir, "--resume", str(resumed), "--epochs", "2")
    assert code == 2 and "has done 3 epochs; give --epochs 3 or more" in capsys.readouterr().err
    code, extended = run(tmp_path, tiny_fmnist_dir, "--resume", str(resumed), "--epochs", "4")
    assert code == 0 and len((extended / "metrics.csv").read_text().splitlines()) == 6  # a resumed run resumes


def test_nan_loss_fails_cleanly(tmp_path: Path, tiny_fmnist_dir: Path, models: tuple[str, str],
                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    class Exploding(KLDist):
        """Returns NaN from the second step."""

        def forward(self, step):  # type: ignore[no-untyped-def]
            loss = super().forward(step)["kl"]
            self.calls = getattr(self, "calls", 0) + 1
            return {"kl": loss * float("nan") if self.calls > 1 else loss}

    monkeypatch.setitem(METHODS, "exploding", Exploding)
    student, teacher = models
    code, run_dir = run(tmp_path, tiny_fmnist_dir, "--student", student, "--teacher", teacher, "--method", "exploding")
    err = capsys.readouterr().err
    assert code == 2 and "transfer loss became non-finite in epoch 1" in err and "kl=nan" in err and "Traceback" not in err
    assert json.loads((run_dir / "final.json").read_text())["status"] == "failed"
    assert not (run_dir / "student.safetensors").exists()


def test_bad_input(tmp_path: Path, tiny_fmnist_dir: Path, models: tuple[str, str],
                   capsys: pytest.CaptureFixture) -> None:
    student, teacher = models
    assert run(tmp_path, tiny_fmnist_dir, "--student", student, "--teacher", teacher, "--method", "dpkl")[0] == 2
    err = capsys.readouterr().err
    assert "unknown transfer method 'dpkl' (did you mean" in err and "; known: cd, ce, ce-soft, crd, kl, kl-dp" in err
    assert run(tmp_path, tiny_fmnist_dir, "--student", student, "--teacher", teacher, "--unlabelled")[0] == 2
    err = capsys.readouterr().err
    assert "needs labels but the transfer set is unlabelled; use a label-free method (ce-soft, kl, " in err
    assert "kl-dp-unsup" in err and "xekl" not in err
    other = write_model(tmp_path / "other", 3, names=[f"c{i}" for i in range(10)])
    assert run(tmp_path, tiny_fmnist_dir, "--student", student, "--teacher", other)[0] == 2
    assert "class names differ" in capsys.readouterr().err
    assert run(tmp_path, tiny_fmnist_dir, "--student", student, "--teacher", teacher, "--method-arg", "lam")[0] == 2
    assert "expects K=V" in capsys.readouterr().err
    assert run(tmp_path, tiny_fmnist_dir, "--resume", str(tmp_path))[0] == 2
    assert "not a run directory" in capsys.readouterr().err


def test_the_python_call_gives_the_cli_final_json(offline_hubs, tmp_path: Path) -> None:  # noqa: ANN001
    """Hub models over an image folder with a class map: ``gkt transfer`` and ``gkt.transfer(...)`` with the same
    options write the same final.json numbers (each run its own student file)."""
    import json

    import gkt
    from gkt.cli import main

    options = {"student": "timm:test_resnet.r160_in1k", "teacher": "hf:gkt-tests/tiny-vit",
               "data": f"folder:{offline_hubs.folder.parent}", "class_map": str(offline_hubs.class_map),
               "fraction": 1.0, "epochs": 1, "batch_size": 8, "seed": 3}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    assert main(["transfer", *flags, "--threads", "2", "--out", str(tmp_path / "cli")]) == 0
    (run,) = (tmp_path / "cli").glob("transfer-*")
    cli = json.loads((run / "final.json").read_text())
    api = gkt.transfer(**options, out=tmp_path / "api", say=lambda _: None).final
    for key in ("acc", "acc_student_before", "acc_teacher", "delta_transf", "knowledge_gain", "knowledge_loss",
                "train_loss", "test_samples"):
        assert api[key] == cli[key], key
    same = {"checkpoint": "", "seconds": 0}
    assert json.dumps({**api, **same}) == json.dumps({**cli, **same}) and json.loads(json.dumps(api)) != cli
