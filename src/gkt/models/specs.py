"""Model specs: one string names any classifier.

* ``zoo:NAME`` — a model of the embedded zoo (built by ``gkt zoo build``);
* ``timm:ARCH[@WEIGHTS][?key=value&...]`` — any timm architecture sized to the data, weights
  optional (safetensors, or a ``.pth`` read with ``weights_only=True``);
* ``file:PATH`` — a checkpoint written by gkt (``PATH.safetensors`` + ``PATH.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch

from gkt.data import ImageDataset
from gkt.models.checkpoint import load_checkpoint, load_weights
from gkt.models.classifier import ArchSpec, Classifier, check_label_space
from gkt.models.preprocess import Preprocess
from gkt.utils import GktError


@dataclass(frozen=True)
class DataInfo:
    """What a model built for a dataset needs to know about it."""

    class_names: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dataset(cls, dataset: ImageDataset, max_samples: int = 5000) -> DataInfo:
        idx = torch.linspace(0, len(dataset) - 1, min(len(dataset), max_samples)).long()
        x = dataset.load(idx).float().div_(255)
        mean = tuple(round(v, 4) for v in x.mean((0, 2, 3)).tolist())
        std = tuple(round(v, 4) for v in x.std((0, 2, 3)).clamp_min(1e-3).tolist())
        c, h, _ = dataset.image_shape
        return cls(tuple(dataset.class_names), c, h, mean, std)

    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.channels, self.mean, self.std)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclass(frozen=True)
class ModelSpec:
    source: str
    target: str
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        source, sep, rest = spec.partition(":")
        if not sep or not rest:
            raise GktError(f"model spec {spec!r} needs a source: zoo:NAME, timm:ARCH[@WEIGHTS], file:PATH")
        if source == "file":
            return cls("file", rest)
        if source == "zoo":
            return cls("zoo", rest)
        if source == "timm":
            rest, _, query = rest.partition("?")
            arch, _, weights = rest.partition("@")
            options = {k: _parse_value(v) for k, v in parse_qsl(query, keep_blank_values=True)}
            return cls("timm", arch, weights or None, options)
        raise GktError(f"unknown model source {source!r} in {spec!r}; use zoo:, timm: or file:")


def load_model(spec: str, data: DataInfo | None = None, zoo_dir: str | Path | None = None) -> Classifier:
    """Resolve a spec to a :class:`Classifier` on CPU, in eval mode. ``data`` sizes ``timm:`` models and,
    when given, is checked against the model's label space."""
    parsed = ModelSpec.parse(spec)
    if parsed.source == "file":
        model = load_checkpoint(parsed.target)
    elif parsed.source == "zoo":
        from gkt.zoo import load_zoo_model

        model = load_zoo_model(parsed.target, zoo_dir)
    else:
        model = _build_timm(parsed, data)
    model.name = spec
    if data is not None:
        check_label_space(model, data.class_names)
    return model.eval()


def _build_timm(spec: ModelSpec, data: DataInfo | None) -> Classifier:
    if data is None:
        raise GktError(f"timm:{spec.target} needs a dataset to size its input and head (pass --data)")
    options = dict(spec.options)
    in_chans = int(options.pop("in_chans", data.channels))
    img_size = int(options.pop("img_size", data.image_size))
    mean = tuple(options.pop("mean", data.mean if in_chans == data.channels else (0.5,) * in_chans))
    std = tuple(options.pop("std", data.std if in_chans == data.channels else (0.5,) * in_chans))
    arch = ArchSpec("timm", spec.target, len(data.class_names), in_chans, img_size, options)
    model = Classifier.create(arch, Preprocess(img_size, in_chans, mean, std), data.class_names)
    if spec.weights:
        tensors = load_weights(spec.weights)
        try:
            model.net.model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise GktError(f"{spec.weights} does not fit timm:{spec.target} with {len(data.class_names)} classes "
                           f"({str(exc).splitlines()[0]} ...)") from exc
        model.provenance["weights"] = str(Path(spec.weights).resolve())
    return model


def load_models(specs: Sequence[str], data: DataInfo | None = None, zoo_dir: str | Path | None = None
                ) -> list[Classifier]:
    if not specs:
        raise GktError("no models given")
    return [load_model(s, data, zoo_dir) for s in specs]
