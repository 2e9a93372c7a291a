"""``Classifier``: a network plus its own preprocessing, label names and provenance."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash, tensor_hash
from gkt.core.registry import Registry
from gkt.data.views import View, view_of
from gkt.models.architectures import build_zoo_net
from gkt.models.preprocess import Preprocess, prepare

# Network builders by source: ``(name, num_classes, in_chans, img_size, **kwargs) -> nn.Module``.
NET_SOURCES: Registry[Callable[..., nn.Module]] = Registry("network source")
register_source = NET_SOURCES.register
NET_SOURCES["zoo"] = build_zoo_net


@dataclass(frozen=True)
class ArchSpec:
    """How to rebuild a network: source registry, name, and keyword arguments."""

    source: str
    name: str
    num_classes: int
    in_chans: int
    img_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "name": self.name, "num_classes": self.num_classes,
                "in_chans": self.in_chans, "img_size": self.img_size, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        return cls(d["source"], d["name"], int(d["num_classes"]), int(d["in_chans"]), int(d["img_size"]),
                   dict(d.get("kwargs", {})))

    def build(self) -> nn.Module:
        return NET_SOURCES[self.source](self.name, num_classes=self.num_classes, in_chans=self.in_chans,
                                        img_size=self.img_size, **copy.deepcopy(self.kwargs))

    def describe(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.source}:{self.name}" + (f"({extra})" if extra else "")


class Classifier(nn.Module):
    """A classifier that takes *raw* images (``uint8`` or float in [0, 1]) and applies its own
    preprocessing (channels, resolution, mean/std) before the network."""

    def __init__(self, net: nn.Module, arch: ArchSpec, preprocess: Preprocess, class_names: Sequence[str],
                 provenance: dict[str, Any] | None = None, name: str | None = None):
        super().__init__()
        if len(class_names) != arch.num_classes:
            raise GktError(f"{len(class_names)} class names for a {arch.num_classes}-class network")
        self.net = net
        self.arch = arch
        self.preprocess = preprocess
        self.class_names = list(class_names)
        self.provenance = dict(provenance or {})
        self.name = name or arch.describe()
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, -1, 1, 1), persistent=False)
        self.spec: str | None = None  # the spec it was loaded from (load_model), named in its errors
        self.outputs_checked = False  # the first batch's logits are checked to be finite (check_outputs)

    @classmethod
    def create(cls, arch: ArchSpec, preprocess: Preprocess, class_names: Sequence[str], **kw: Any) -> Classifier:
        """A freshly initialised classifier of ``arch``."""
        return cls(arch.build(), arch, preprocess, class_names, **kw)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return prepare(images.to(self.mean.device, non_blocking=True), self.preprocess, self.mean, self.std)

    def forward(self, images: torch.Tensor, prepared: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of raw ``images``; ``prepared``: the batch already normalised for this model's preprocessing
        (e.g. shared by the models of a pass with the same :class:`Preprocess`), used instead."""
        return self.check_outputs(self.net(self.normalize(images) if prepared is None else prepared))

    def check_outputs(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits``, after checking (on this model's first batch only: one host sync) that they are finite:
        a model whose outputs are NaN or infinite is refused instead of being scored by the argmax of NaN."""
        if not self.outputs_checked and not torch.compiler.is_compiling():
            if not bool(torch.isfinite(logits.detach()).all()):
                bad = (~torch.isfinite(logits.detach())).sum().item()
                raise GktError(f"model {self.spec or self.name}: {bad} of its {logits.numel()} outputs on "
                               "the first batch are NaN or infinite; the model is broken (damaged weights "
                               "or a numerically unstable network): give another model")
            self.outputs_checked = True
        return logits

    def prepare_view(self, images: torch.Tensor) -> torch.Tensor:
        """The normalised input from a batch already resized and cropped to this model's input (its view of a
        decode plan, :func:`gkt.data.views.view_of`): only channels and normalisation are applied."""
        return prepare(images.to(self.mean.device, non_blocking=True), self.preprocess, self.mean, self.std,
                       at_input=True)

    def input_of(self, batch: torch.Tensor, plan: tuple[View, ...]) -> torch.Tensor:
        """The normalised input from a batch decoded with the decode ``plan`` (``()``: raw images): the
        model's own view when the plan holds it (exactly its library's transform), else the batch (the
        plan's largest view, for a canvas of several) resized and cropped here."""
        own = view_of(batch, plan, self.preprocess.view) if plan else None
        if own is not None:
            return self.prepare_view(own)
        if len(plan) > 1:
            batch = view_of(batch, plan, max(plan, key=lambda v: (v.crop, v.resize)))
        return self.normalize(batch)

    def forward_view(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of a batch that is this model's view of a decode plan (see :meth:`prepare_view`)."""
        return self.check_outputs(self.net(self.prepare_view(images)))

    def features(self, images: torch.Tensor, prepared: torch.Tensor | None = None) -> torch.Tensor:
        """Penultimate, globally pooled features (before the last activation where the net exposes it);
        ``prepared`` as in :meth:`forward`."""
        return self.net.forward_features(self.normalize(images) if prepared is None else prepared)

    def identity(self) -> str:
        """Content hash of what the model computes: weights, architecture, preprocessing and class names
        (the one key for every cache of a model's outputs, adaptations and runs)."""
        return stable_hash({"weights": tensor_hash(self.net.state_dict()), "arch": self.arch.to_dict(),
                            "preprocess": self.preprocess.to_dict(), "class_names": self.class_names}, 24)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def clone(self) -> Classifier:
        return copy.deepcopy(self)


def check_finite_weights(model: Classifier) -> None:
    """Refuse a model whose weights hold NaN or infinite values, naming the model and a tensor (buffers may
    hold -inf on purpose, e.g. attention masks: a NaN running statistic shows in the outputs, checked on the
    first batch)."""
    for key, tensor in model.net.named_parameters():
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor.detach())
            if not bool(finite.all()):
                count = (~finite).sum().item()
                raise GktError(f"model {model.spec or model.name}: its weights hold {count} NaN or infinite "
                               f"value(s) (in {key}); the checkpoint is damaged or diverged: restore or "
                               "retrain it, or give another model")


def check_label_space(model: Classifier, class_names: Sequence[str], what: str = "the data") -> None:
    """Raise a clear error when a model's label space differs from ``class_names``."""
    if model.num_classes != len(class_names):
        raise GktError(f"{model.name} predicts {model.num_classes} classes but {what} has {len(class_names)}; "
                       "models and data must share a label space (a class map can align them)")
    if list(model.class_names) != list(class_names):
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(model.class_names, class_names)) if a != b][:3]
        raise GktError(f"{model.name}'s class names differ from {what}'s, e.g. {diff} "
                       "(index, model, data); align them with a class map")
