from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, make_model

from gkt.analysis.complementary import analyze
from gkt.engine.loop import predict_logits
from gkt.engine.predictions import (
    FULL_LOGITS_MAX_CLASSES,
    Predictions,
    dataset_identity,
    get_many,
    get_predictions,
    load_predictions,
    store_dir,
)
from gkt.models import Classifier, Preprocess

CPU = torch.device("cpu")


def test_round_trip_keeps_full_logits(blobs) -> None:
    model = make_model("linear", 0)
    preds = get_predictions(model, blobs, CPU, batch_size=64)
    files = list(store_dir().glob("*.safetensors"))
    assert len(files) == 1 and not list(store_dir().glob(".*tmp"))  # written atomically, no leftovers
    logits = predict_logits(model, blobs, CPU)
    assert torch.allclose(preds.logits, logits, atol=1e-6)
    assert torch.equal(preds.predicted, logits.argmax(1)) and torch.equal(preds.labels, blobs.labels)
    assert torch.allclose(preds.true_prob, logits.softmax(1)[torch.arange(len(blobs)), blobs.labels])
    again = load_predictions(files[0])
    assert torch.equal(again.logits, preds.logits) and again.num_classes == 4 and again.topk_logits is None


def test_n_models_cost_n_forward_passes(blobs, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    forward = Classifier.forward

    def counting(self: Classifier, images: torch.Tensor, prepared: torch.Tensor | None = None) -> torch.Tensor:
        calls.append(self.name)
        return forward(self, images, prepared)

    monkeypatch.setattr(Classifier, "forward", counting)
    models = [make_model("linear", 0), make_model("linear", 1), make_model("mlp", 2, hidden=[16]),
              make_model("mlp", 3, hidden=[16])]
    first = analyze(models, blobs, CPU, batch_size=len(blobs), semantic=False, seed=7)
    # 4 models + one random-init teacher per distinct architecture (2); a pairwise approach needs 4·3·2 = 24.
    assert sorted(calls) == sorted([m.name for m in models] + ["random(linear-0)", "random(mlp-2)"])
    calls.clear()
    second = analyze(models, blobs, CPU, batch_size=len(blobs), semantic=False, seed=7)
    assert calls == []  # everything comes from the store
    assert all(p.from_store for p in get_many(models, blobs, CPU))
    assert torch.equal(first.rho_pos, second.rho_pos) and torch.equal(first.random.rho_pos, second.random.rho_pos)
    get_many(models, blobs, CPU, batch_size=len(blobs), refresh=True)
    assert len(calls) == len(models)


def test_key_tracks_weights_and_data(blobs) -> None:
    model = make_model("linear", 0)
    get_predictions(model, blobs, CPU)
    with torch.no_grad():
        model.net.head.bias += 1.0
    get_predictions(model, blobs, CPU)
    other = make_blobs(seed=5)  # same name, labels and shape: only the pixels differ
    assert dataset_identity(other) != dataset_identity(blobs)
    get_predictions(model, other, CPU)
    model.preprocess = Preprocess(12, 1, (0.5,), (0.5,))
    get_predictions(model, other, CPU)
    assert len(list(store_dir().glob("*.safetensors"))) == 4


def test_large_label_space_keeps_top_k() -> None:
    data = make_blobs(n_per_class=1, num_classes=FULL_LOGITS_MAX_CLASSES + 20)
    model = make_model("linear", 0, num_classes=data.num_classes)
    model.class_names = data.class_names
    preds = get_predictions(model, data, CPU, topk=5)
    logits = predict_logits(model, data, CPU)
    assert preds.logits is None and preds.topk_logits.shape == (len(data), 5)
    assert preds.topk_logits.dtype == torch.float16
    assert torch.equal(preds.predicted, logits.argmax(1)) and torch.equal(preds.topk_indices[:, 0], logits.argmax(1))
    probs = logits.softmax(1)
    assert torch.allclose(preds.true_prob, probs[torch.arange(len(data)), data.labels], atol=1e-6)
    assert torch.allclose(preds.max_prob, probs.max(1).values, atol=1e-6)
    stored = get_predictions(model, data, CPU, topk=5)
    assert torch.equal(stored.topk_indices, preds.topk_indices)


def test_corrupt_store_is_recomputed(blobs, caplog: pytest.LogCaptureFixture) -> None:
    model = make_model("linear", 0)
    first = get_predictions(model, blobs, CPU)
    path: Path = next(store_dir().glob("*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    again = get_predictions(model, blobs, CPU)
    assert "recomputing" in caplog.text and torch.equal(again.predicted, first.predicted)
    assert load_predictions(path).key == first.key
    other = get_predictions(make_model("linear", 1), blobs, CPU)
    path.write_bytes((store_dir() / f"{other.key}.safetensors").read_bytes())  # another model's, copied over
    caplog.clear()
    third = get_predictions(model, blobs, CPU)
    assert "copied or renamed" in caplog.text and torch.equal(third.predicted, first.predicted)


def test_from_logits_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    preds = Predictions.from_logits(logits, torch.tensor([0, 2]), "m")
    assert preds.correct.tolist() == [True, False] and preds.accuracy == 0.5
    assert preds.true_prob[1] == pytest.approx(1 / (2 + math.e**3))


def test_a_model_shares_its_predictions_across_decode_plans(tmp_path: Path) -> None:
    """On folder images decoded with a plan of several views, a model's stored predictions are keyed by its
    own view: a pass with other partners (another plan) reads them instead of predicting again."""
    from gkt.data.spec import load_split
    from gkt.models.classifier import ArchSpec
    from gkt.models.preprocess import decode_plan_for
    from tests.hubs import IMAGENETTE, image_folder

    image_folder(tmp_path / "imgs" / "val")
    image_folder(tmp_path / "imgs" / "train", seed=1)
    folder = load_split(f"folder:{tmp_path / 'imgs'}", "val")
    torch.manual_seed(0)
    a, b, c = (Classifier.create(ArchSpec("zoo", "linear", len(IMAGENETTE), 3, 16, {}),
                                 Preprocess(16, 3, (0.5,) * 3, (0.25,) * 3, crop_pct=pct), list(IMAGENETTE), name=n)
               for n, pct in (("a", 0.875), ("b", 1.0), ("c", 0.5)))
    first_a, _ = get_many([a, b], folder.at_decode_plan(decode_plan_for([a.preprocess, b.preprocess])), CPU, workers=0)
    third = folder.at_decode_plan(decode_plan_for([a.preprocess, b.preprocess, c.preprocess]))
    again_a, new_c = get_many([a, c], third, CPU, workers=0)
    assert again_a.from_store and not new_c.from_store and torch.equal(again_a.logits, first_a.logits)
    fresh_a, = get_many([a], third, CPU, refresh=True, workers=0)  # the same outputs when computed on this plan
    assert torch.equal(fresh_a.logits, first_a.logits)
