"""Model specs: one string names any classifier. Each source registers how its spec is written and
loaded (:func:`register_spec_source`):

* ``zoo:NAME`` — a model of the embedded zoo (built by ``gkt zoo build``);
* ``timm:ARCH[@WEIGHTS][?key=value&...]`` — any timm architecture sized to the data, weights
  optional (safetensors, or a ``.pth`` read with ``weights_only=True``); a timm ``pretrained_cfg``
  (``config.json`` next to the weights, or ``?pretrained_cfg=FILE``) sets the preprocessing;
* ``file:PATH`` — a checkpoint written by gkt (``PATH.safetensors`` + ``PATH.json``);
* ``hf:PATH`` and ``torchvision:ARCH[@WEIGHTS]`` — see :mod:`gkt.models.sources`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn

from gkt.core.errors import GktError
from gkt.core.registry import Registry
from gkt.data.datasets import ImageDataset
from gkt.models.checkpoint import load_checkpoint, load_weights
from gkt.models.class_map import ClassMapLike, apply_class_map
from gkt.models.classifier import ArchSpec, Classifier, check_label_space
from gkt.models.preprocess import Preprocess


@dataclass(frozen=True)
class DataInfo:
    """What a model built for a dataset needs to know about it."""

    class_names: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dataset(cls, dataset: ImageDataset) -> DataInfo:
        """Classes, layout and pixel statistics (:meth:`ImageDataset.pixel_stats`: a sample of at most a few
        hundred decoded images for encoded datasets, cached with a folder's index)."""
        mean, std = dataset.pixel_stats()
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
        if not sep:
            raise GktError(f"model spec {spec!r} needs a source: {_usage()}")
        if source not in SPEC_SOURCES:
            raise GktError(f"unknown model source {source!r} in {spec!r}; use {_usage()}")
        syntax = SPEC_SOURCES[source]
        if not rest:
            raise GktError(f"model spec {spec!r} names no model: write it as {syntax.usage}")
        query = ""
        if syntax.options:
            rest, _, query = rest.partition("?")
        weights = ""
        if syntax.weights:
            rest, _, weights = rest.partition("@")
        if not rest:
            raise GktError(f"model spec {spec!r}: write it as {syntax.usage}")
        options = {k: _parse_value(v) for k, v in parse_qsl(query, keep_blank_values=True)}
        return cls(source, rest, weights or None, options)


SpecLoader = Callable[[ModelSpec, "DataInfo | None", "str | Path | None"], Classifier]


@dataclass(frozen=True)
class SpecSource:
    """How a source's spec is written (``usage``; ``@WEIGHTS`` and ``?k=v`` parts) and loaded."""

    usage: str
    load: SpecLoader
    weights: bool = False
    options: bool = False


SPEC_SOURCES: Registry[SpecSource] = Registry("model source")


def register_spec_source(name: str, usage: str, weights: bool = False, options: bool = False
                         ) -> Callable[[SpecLoader], SpecLoader]:
    """Register ``load(spec, data, zoo_dir) -> Classifier`` for specs ``name:...``."""

    def decorate(load: SpecLoader) -> SpecLoader:
        SPEC_SOURCES[name] = SpecSource(usage, load, weights, options)
        return load

    return decorate


def _usage() -> str:
    return ", ".join(s.usage for s in SPEC_SOURCES.values())


def load_model(spec: str, data: DataInfo | None = None, zoo_dir: str | Path | None = None,
               class_map: ClassMapLike | None = None) -> Classifier:
    """Resolve a spec to a :class:`Classifier` on CPU, in eval mode. ``data`` sizes ``timm:`` models and,
    when given, is checked against the model's label space. ``class_map`` (a JSON/YAML file, a dict, or
    ``"auto"``) first aligns the model's classes to the data's (:func:`gkt.models.class_map.apply_class_map`)."""
    parsed = ModelSpec.parse(spec)
    try:
        model = SPEC_SOURCES[parsed.source].load(parsed, data, zoo_dir)
    except (TypeError, ValueError) as exc:  # an option of the wrong type, e.g. ?img_size=abc or ?mean=1
        raise GktError(f"model spec {spec!r}: {exc} ({type(exc).__name__}); check its options "
                       f"(write it as {SPEC_SOURCES[parsed.source].usage})") from exc
    if class_map is not None:
        if data is None:
            raise GktError(f"{spec}: a class map aligns a model to a dataset's classes; give the dataset")
        model = apply_class_map(model, data.class_names, class_map)
    model.name = spec
    if data is not None:
        check_label_space(model, data.class_names)
    return model.eval()


@register_spec_source("file", "file:PATH")
def _load_file(spec: ModelSpec, data: DataInfo | None, zoo_dir: str | Path | None) -> Classifier:
    return load_checkpoint(spec.target)


@register_spec_source("zoo", "zoo:NAME")
def _load_zoo(spec: ModelSpec, data: DataInfo | None, zoo_dir: str | Path | None) -> Classifier:
    from gkt.models.zoo import load_zoo_model

    return load_zoo_model(spec.target, zoo_dir)


def read_class_names(value: str) -> tuple[str, ...]:
    """Class names from ``imagenet1k`` (torchvision's ImageNet-1k categories), a JSON list file, or a
    text file with one name per line."""
    if value == "imagenet1k":
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return tuple(_IMAGENET_CATEGORIES)
    path = Path(value)
    if not path.is_file():
        raise GktError(f"classes={value}: no such file (a JSON list or one class name per line, or imagenet1k)")
    if path.suffix == ".json":
        names = json.loads(path.read_text())
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise GktError(f"{path}: expected a JSON list of class names")
        return tuple(names)
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def resolve_class_names(options: dict[str, Any], data: DataInfo | None, what: str,
                        label_names: Sequence[str] | None = None, num_classes: int | None = None
                        ) -> tuple[str, ...]:
    """A built model's label space, popping ``classes``/``num_classes`` from ``options``: the ``classes``
    option, else the weights' own ``label_names``, else the data's names when the class count fits (or is
    unknown), else index names ``"0"``, ``"1"``, ... (align those with a class map)."""
    n = options.pop("num_classes", num_classes)
    if "classes" in options:
        names = read_class_names(str(options.pop("classes")))
    elif label_names:
        names = tuple(label_names)
    elif data is not None and (n is None or int(n) == len(data.class_names)):
        names = tuple(data.class_names)
    elif n is not None:
        names = tuple(str(i) for i in range(int(n)))
    else:
        raise GktError(f"{what} needs a dataset (--data), classes=FILE or num_classes=N to size its head")
    if n is not None and int(n) != len(names):
        raise GktError(f"{what}: num_classes={n} but {len(names)} class names")
    return names


def load_state_into(module: nn.Module, weights: str | Path, what: str) -> None:
    """Load a weights file into ``module`` (strict), as a clear error when it does not fit."""
    tensors = load_weights(weights)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise GktError(f"{weights} does not fit {what} ({str(exc).splitlines()[0]} ...)") from exc


def read_timm_config(spec: ModelSpec, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(pretrained_cfg, hub_config)`` of a timm spec: from ``?pretrained_cfg=FILE`` (a bare pretrained_cfg
    or timm's hub ``config.json``), else from a ``config.json`` holding a ``pretrained_cfg`` next to the
    weights (as ``timm.models.push_to_hf_hub``/``save_for_hf`` write it); empty dicts when there is none.
    Its ``input_size``, ``mean`` and ``std`` become the preprocessing (the raw batch is resized straight to
    the input size: ``crop_pct`` is not applied), its ``label_names`` the class names."""
    path = options.pop("pretrained_cfg", None)
    if path is None and spec.weights:
        candidate = Path(spec.weights).parent / "config.json"
        path = candidate if candidate.is_file() else None
    if path is None:
        return {}, {}
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GktError(f"pretrained_cfg {path}: cannot read it as JSON ({exc})") from exc
    if "pretrained_cfg" in config:
        return dict(config["pretrained_cfg"]), config
    if "input_size" in config or "mean" in config:
        return config, {}
    if "pretrained_cfg" in spec.options:
        raise GktError(f"pretrained_cfg {path}: neither a timm pretrained_cfg nor a hub config.json holding one")
    return {}, {}  # an unrelated config.json next to the weights


def _timm_weights(spec: ModelSpec) -> ModelSpec:
    """A timm hub directory stands for its ``model.safetensors``."""
    if spec.weights and Path(spec.weights).is_dir():
        return ModelSpec(spec.source, spec.target, str(Path(spec.weights) / "model.safetensors"), spec.options)
    return spec


@register_spec_source("timm", "timm:ARCH[@WEIGHTS][?k=v&...]", weights=True, options=True)
def _load_timm(spec: ModelSpec, data: DataInfo | None, zoo_dir: str | Path | None) -> Classifier:
    spec = _timm_weights(spec)
    options = dict(spec.options)
    cfg, hub = read_timm_config(spec, options)
    options = {**hub.get("model_args", {}), **options}  # the hub's create_model arguments; the spec's win
    label_names = options.pop("label_names", None) or hub.get("label_names") or cfg.get("label_names")
    if data is None and "input_size" not in cfg:
        raise GktError(f"timm:{spec.target} needs a dataset to size its input and head (pass --data)")
    cfg_chans, cfg_size = square_input(cfg.get("input_size"), f"timm:{spec.target} pretrained_cfg")
    in_chans = int(options.pop("in_chans", cfg_chans or data.channels))
    img_size = int(options.pop("img_size", cfg_size or data.image_size))
    fits_data = data is not None and in_chans == data.channels
    default_mean, default_std = (data.mean, data.std) if fits_data else ((0.5,) * in_chans, (0.5,) * in_chans)
    mean = tuple(options.pop("mean", cfg.get("mean", default_mean)))
    std = tuple(options.pop("std", cfg.get("std", default_std)))
    names = resolve_class_names(options, data, f"timm:{spec.target}", label_names, hub.get("num_classes"))
    arch = ArchSpec("timm", spec.target, len(names), in_chans, img_size, options)
    model = Classifier.create(arch, make_preprocess(img_size, in_chans, mean, std, spec), names)
    if cfg:
        model.provenance["pretrained_cfg"] = {k: cfg[k] for k in ("input_size", "mean", "std") if k in cfg}
    if spec.weights:
        load_state_into(model.net.model, spec.weights, f"timm:{spec.target} with {len(names)} classes")
        model.provenance["weights"] = str(Path(spec.weights).resolve())
    return model


def square_input(input_size: Sequence[int] | None, what: str) -> tuple[int | None, int | None]:
    """``(channels, size)`` of a ``[C, H, W]`` input size; gkt models take square inputs."""
    if input_size is None:
        return None, None
    c, h, w = (int(v) for v in input_size)
    if h != w:
        raise GktError(f"{what}: input size {h}x{w} is not square; give img_size=N")
    return c, h


def make_preprocess(size: int, channels: int, mean: Sequence[float], std: Sequence[float], spec: ModelSpec
                    ) -> Preprocess:
    try:
        return Preprocess(size, channels, tuple(float(v) for v in mean), tuple(float(v) for v in std))
    except ValueError as exc:
        raise GktError(f"{spec.source}:{spec.target}: {exc}") from exc


def load_models(specs: Sequence[str], data: DataInfo | None = None, zoo_dir: str | Path | None = None
                ) -> list[Classifier]:
    if not specs:
        raise GktError("no models given")
    return [load_model(s, data, zoo_dir) for s in specs]
