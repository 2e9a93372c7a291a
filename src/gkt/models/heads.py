"""Head surgery: find a classifier's head and give it a new label space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from gkt.core.errors import GktError
from gkt.models import (
    ArchSpec,
    Classifier,
)


def head_keys(arch: ArchSpec) -> set[str]:
    """State-dict keys of the classification head: those whose shape depends on ``num_classes``."""
    a = {k: v.shape for k, v in arch.build().state_dict().items()}
    b = {k: v.shape for k, v in replace(arch, num_classes=arch.num_classes + 1).build().state_dict().items()}
    return {k for k in a if a[k] != b.get(k)}


def with_new_head(model: Classifier, class_names: Sequence[str], seed: int = 0) -> Classifier:
    """A copy of ``model`` with a freshly initialised head for ``class_names`` (body weights kept)."""
    arch = replace(model.arch, num_classes=len(class_names))
    torch.manual_seed(seed)
    fresh = Classifier.create(arch, model.preprocess, class_names, provenance=dict(model.provenance),
                              name=model.name)
    heads = head_keys(model.arch)
    body = {k: v for k, v in model.net.state_dict().items() if k not in heads}
    missing, unexpected = fresh.net.load_state_dict(body, strict=False)
    if set(missing) != heads or unexpected:
        raise GktError(f"{model.name}: cannot separate body from head (missing {missing}, unexpected {unexpected})")
    return fresh
