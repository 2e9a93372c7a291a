"""Adapting models held in the hub cache: each snapshot gets its own cache entry, keyed by contents."""

from __future__ import annotations

from pathlib import Path

import torch

from gkt.adapt.heads import AdaptConfig, adapt_cached
from gkt.models import load_checkpoint
from tests.hubs import TIMM_MODELS, HubCaches, image_folder

CPU = torch.device("cpu")
CFG = AdaptConfig(l2=(1e-2,), max_iter=20)


def test_two_hub_snapshots_adapted_one_after_the_other_get_two_cached_results(offline_hubs: HubCaches) -> None:
    data = f"folder:{offline_hubs.folder.parent}"
    first, first_record = adapt_cached(f"timm:{TIMM_MODELS[0]}", data, CFG, CPU)
    second, second_record = adapt_cached(f"timm:{TIMM_MODELS[1]}", data, CFG, CPU)
    assert first != second and not first_record["cached"] and not second_record["cached"]
    assert load_checkpoint(first.removeprefix("file:")).arch.name == TIMM_MODELS[0]
    assert load_checkpoint(second.removeprefix("file:")).arch.name == TIMM_MODELS[1]
    again, record = adapt_cached(f"timm:{TIMM_MODELS[0]}", data, CFG, CPU)
    assert again == first and record["cached"]


def test_changed_images_with_the_same_names_and_labels_miss_the_cache(offline_hubs: HubCaches, tmp_path: Path
                                                                     ) -> None:
    root = tmp_path / "data"
    image_folder(root / "train", seed=1)
    image_folder(root / "val", seed=2)
    spec, _ = adapt_cached(f"timm:{TIMM_MODELS[0]}", f"folder:{root}", CFG, CPU)
    image_folder(root / "train", seed=3)  # same file names and labels, other pixels
    changed, record = adapt_cached(f"timm:{TIMM_MODELS[0]}", f"folder:{root}", CFG, CPU)
    assert changed != spec and not record["cached"]
