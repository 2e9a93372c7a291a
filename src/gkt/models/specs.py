"""Model specs: one string names any classifier. Each source registers how its spec is written and
loaded (:func:`register_spec_source`):

* ``zoo:NAME`` — a model of the embedded zoo (built by ``gkt zoo build``);
* ``file:PATH`` — a checkpoint written by gkt (``PATH.safetensors`` + ``PATH.json``);
* ``timm:NAME[.TAG]``, ``timm:hf-hub:ORG/NAME[@REVISION]``, ``timm:ARCH[@WEIGHTS]`` — see
  :mod:`gkt.models.timm_source`;
* ``hf:ORG/NAME[@REVISION]`` or ``hf:DIR`` and ``torchvision:ARCH[?weights=ENUM]`` — see :mod:`gkt.models.sources`.

Every model goes by a short :func:`display_name` in tables and figures. Options that reach a library's
constructor are allow-listed (:func:`allowed_options`); typed options are checked when the spec is parsed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from torch import nn

from gkt.core.env import env, register_env
from gkt.core.errors import GktError
from gkt.core.io import parse_json
from gkt.core.limits import read_text_input
from gkt.core.registry import Registry
from gkt.data.datasets import ImageDataset
from gkt.models.checkpoint import load_checkpoint, load_weights
from gkt.models.class_map import ClassMapLike, apply_class_map
from gkt.models.classifier import Classifier, check_finite_weights, check_label_space
from gkt.models.preprocess import Preprocess

PixelStats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class DataInfo:
    """What a model built for a dataset needs to know about it. The pixel statistics are given
    (``known_mean``/``known_std``) or measured on first use (``measure_stats``): models that bring their own
    normalisation (every pretrained hub model) never need them, and measuring decodes images."""

    class_names: tuple[str, ...]
    channels: int
    image_size: int
    known_mean: tuple[float, ...] | None = None
    known_std: tuple[float, ...] | None = None
    all_class_names: tuple[str, ...] = ()  # the data set's classes before a class selection (default: the same)
    measure_stats: Callable[[], PixelStats] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dataset(cls, dataset: ImageDataset) -> DataInfo:
        """Classes and layout; pixel statistics (:meth:`ImageDataset.pixel_stats`: a sample of at most a few
        hundred decoded images for encoded datasets, cached with a folder's index) when first asked for."""
        c, h, _ = dataset.image_shape
        return cls(tuple(dataset.class_names), c, h, all_class_names=tuple(dataset.all_class_names),
                   measure_stats=functools.cache(dataset.pixel_stats))

    def pixel_stats(self) -> PixelStats:
        """Per-channel mean and std of ``[0, 1]`` pixels."""
        if self.known_mean is not None and self.known_std is not None:
            return self.known_mean, self.known_std
        if self.measure_stats is None:
            raise ValueError("DataInfo without pixel statistics: give known_mean/known_std or measure_stats")
        return self.measure_stats()

    @property
    def mean(self) -> tuple[float, ...]:
        return self.pixel_stats()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self.pixel_stats()[1]

    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.channels, self.mean, self.std)


def _parse_value(text: str) -> Any:
    try:
        return parse_json(text)
    except ValueError:  # not JSON (or nested too deeply): the text itself
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
        for key, value in options.items():
            check = TYPED_OPTIONS.get(key)
            if check is not None and not check[0](value):
                raise GktError(f"model spec {spec!r}: {key}={value!r} must be {check[1]}")
        return cls(source, rest, weights or None, options)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


# The largest input size a spec or --img-size may ask for (a batch of 4096 px images is already gigabytes).
MAX_IMG_SIZE = 4096

# Spec options with a fixed type, checked when a spec is parsed: (check, what it must be).
TYPED_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "img_size": (lambda v: _positive_int(v) and v <= MAX_IMG_SIZE, f"an integer from 1 to {MAX_IMG_SIZE}"),
    "num_classes": (_positive_int, "a positive integer"),
    "in_chans": (_positive_int, "a positive integer"),
    "mean": (_numbers, "a list of numbers, e.g. [0.5,0.5,0.5]"),
    "std": (lambda v: _numbers(v) and all(x > 0 for x in v), "a list of positive numbers, e.g. [0.5,0.5,0.5]"),
    "crop_pct": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
                 "a number in (0, 1]"),
    "pretrained": (lambda v: isinstance(v, bool), "true or false"),
}


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


def source_prefixes() -> str:
    """Every registered model source as help texts list it (``zoo:, hf:, torchvision:, timm: or file:``;
    the full forms are in ``gkt --help``)."""
    *most, last = [f"{name}:" for name in sorted(SPEC_SOURCES, key=lambda name: name == "file")]
    return f"{', '.join(most)} or {last}"


# The input size a command evaluates every model at (set by the CLI's --img-size for the whole command,
# inherited by the worker processes of a study); a spec's own ?img_size=N wins.
IMG_SIZE_ENV = "GKT_IMG_SIZE"


def parse_img_size(text: str) -> int:
    """An input size (``--img-size``, ``$GKT_IMG_SIZE``): an integer from 1 to :data:`MAX_IMG_SIZE`."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid int value: {text!r}") from None
    if not 1 <= value <= MAX_IMG_SIZE:
        raise ValueError(f"{value} px: give an input size from 1 to {MAX_IMG_SIZE}")
    return value


register_env(IMG_SIZE_ENV, f"what --img-size takes (an integer from 1 to {MAX_IMG_SIZE})", parse_img_size)


@contextlib.contextmanager
def img_size_default(size: int | None) -> Iterator[None]:
    """Within the block, :func:`load_model` sizes every model's input to ``size`` px (``None``: as it is)."""
    if size is None:
        yield
        return
    before = os.environ.get(IMG_SIZE_ENV)
    os.environ[IMG_SIZE_ENV] = str(int(size))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(IMG_SIZE_ENV, None)
        else:
            os.environ[IMG_SIZE_ENV] = before


def _with_img_size(parsed: ModelSpec) -> ModelSpec:
    """``parsed`` with the command's input size (:data:`IMG_SIZE_ENV`) as its ``img_size`` option, for
    sources that take options and specs that do not set it."""
    size = env(IMG_SIZE_ENV)
    if size is None or "img_size" in parsed.options or not SPEC_SOURCES[parsed.source].options:
        return parsed
    return ModelSpec(parsed.source, parsed.target, parsed.weights, {**parsed.options, "img_size": int(size)})


def load_model(spec: str, data: DataInfo | None = None, zoo_dir: str | Path | None = None,
               class_map: ClassMapLike | None = None, check_labels: bool = True) -> Classifier:
    """Resolve a spec to a :class:`Classifier` on CPU, in eval mode. ``data`` sizes ``timm:`` models and,
    when given (and ``check_labels``), is checked against the model's label space. ``class_map`` (a
    JSON/YAML file, a dict, or
    ``"auto"``) first aligns the model's classes to the data's (:func:`gkt.models.class_map.apply_class_map`).
    Within :func:`img_size_default`, library models take its input size; a ``zoo:``/``file:`` model, whose
    input size is fixed by its training, must already have it."""
    parsed = _with_img_size(ModelSpec.parse(spec))
    try:
        model = SPEC_SOURCES[parsed.source].load(parsed, data, zoo_dir)
    except (TypeError, ValueError) as exc:  # an option of the wrong type, e.g. ?img_size=abc or ?mean=1
        raise GktError(f"model spec {spec!r}: {exc} ({type(exc).__name__}); check its options "
                       f"(write it as {SPEC_SOURCES[parsed.source].usage})") from exc
    if class_map is not None:
        if data is None:
            raise GktError(f"{spec}: a class map aligns a model to a dataset's classes; give the dataset")
        model = apply_class_map(model, data.class_names, class_map, data.all_class_names)
    model.name, model.spec = display_name(spec), spec
    check_finite_weights(model)
    size = env(IMG_SIZE_ENV)
    if size is not None and model.preprocess.input_size != int(size) and "img_size" not in parsed.options:
        raise GktError(f"{spec}: --img-size {size} does not apply: a {parsed.source}: model keeps the input size "
                       f"it was trained at ({model.preprocess.input_size} px); drop --img-size, or set "
                       "?img_size=N on each library model's spec instead")
    if data is not None and check_labels:
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
    if not Path(value).exists() and not Path(value).is_symlink():
        raise GktError(f"classes={value}: no such file (a JSON list or one class name per line, or imagenet1k)")
    text = read_text_input(path, "classes=")
    if path.suffix == ".json":
        try:
            names = parse_json(text)
        except ValueError as exc:
            raise GktError(f"classes={path}: not valid JSON ({exc}); give a JSON list of class names") \
                from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise GktError(f"{path}: expected a JSON list of class names")
        return tuple(names)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


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
        raise GktError(f"{weights} does not fit {what}: {' '.join(str(exc).split())[:400]}") from exc


def square_input(input_size: Sequence[int] | None, what: str) -> tuple[int | None, int | None]:
    """``(channels, size)`` of a ``[C, H, W]`` input size; gkt models take square inputs."""
    if input_size is None:
        return None, None
    c, h, w = (int(v) for v in input_size)
    if h != w:
        raise GktError(f"{what}: input size {h}x{w} is not square; give img_size=N")
    return c, h


def make_preprocess(size: int, channels: int, mean: Sequence[float], std: Sequence[float], spec: ModelSpec,
                    crop_pct: float = 1.0, interpolation: str = "bilinear", squash: bool = False,
                    crop_rounding: str = "round") -> Preprocess:
    """A :class:`Preprocess`, its invalid values (from a spec or a model's config) as a clear error."""
    what = f"{spec.source}:{spec.target}"
    try:
        values = [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError) as exc:
        raise GktError(f"{what}: mean and std must be lists of numbers, e.g. mean=[0.5,0.5,0.5] ({exc})") from exc
    if any(v <= 0 for v in values[1]):
        raise GktError(f"{what}: std must be positive, got {list(std)}")
    try:
        return Preprocess(int(size), int(channels), tuple(values[0]), tuple(values[1]), float(crop_pct),
                          str(interpolation), bool(squash), str(crop_rounding))
    except (TypeError, ValueError) as exc:
        raise GktError(f"{what}: {exc}") from exc


def allowed_options(options: dict[str, Any], allowed: frozenset[str], what: str) -> dict[str, Any]:
    """``options`` when every key is in ``allowed`` (constructor settings; never a path or a loader option);
    a clear error naming the others."""
    refused = sorted(set(options) - allowed)
    if refused:
        raise GktError(f"{what}: options {refused} are not allowed (gkt passes only architecture settings to "
                       f"a library constructor: {', '.join(sorted(allowed))})")
    bad = [k for k, v in options.items() if not _plain_value(v)]
    if bad:
        raise GktError(f"{what}: options {sorted(bad)} must be numbers, strings, booleans or lists of them")
    return dict(options)


def _plain_value(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain_value(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def display_name(spec: str) -> str:
    """The short name a model goes by in tables and figures: ``resnet18.a1_in1k`` for
    ``timm:resnet18.a1_in1k``, ``timm:hf-hub:timm/resnet18.a1_in1k`` or a hub snapshot directory,
    ``NAME`` for ``hf:ORG/NAME``, ``resnet18.IMAGENET1K_V1`` for ``torchvision:resnet18?weights=IMAGENET1K_V1``
    (and its other forms, ``torchvision:resnet18:ResNet18_Weights.IMAGENET1K_V1``),
    the file's stem for ``file:PATH``; a pinned hub revision follows as ``@REV`` (a commit: its first 8
    characters); ``zoo:`` specs keep their spec; options other than weights are kept after a ``?``."""
    parsed = ModelSpec.parse(spec)
    if parsed.source == "file":
        return path_display_name(parsed.target)
    if parsed.source not in ("timm", "hf", "torchvision"):
        return spec
    options = dict(parsed.options)
    name, revision = parsed.target.removeprefix("hf-hub:"), None
    weights = parsed.weights
    if parsed.source == "timm" and parsed.target.startswith("hf-hub:"):
        revision, weights = weights, None
    elif parsed.source == "hf" and not Path(name).is_dir():
        name, _, revision = name.partition("@")
    if parsed.source == "hf" or Path(name).is_absolute() or "/" in name:
        name = path_display_name(name)
    if weights:
        weights = path_display_name(weights)
        name = weights if weights.partition(".")[0] == name else f"{name}@{weights}"
    if revision:
        name += f"@{revision[:8] if re.fullmatch(r'[0-9a-f]{40}', revision) else revision}"
    if parsed.source == "torchvision":  # ARCH:ENUM or ?weights=ENUM; ENUM also as ENUM_CLASS.MEMBER
        name, _, enum = name.partition(":")
        enum = str(options.pop("weights", enum))
        name += f".{enum.rpartition('.')[2]}" if enum else ""
    options.pop("pretrained", None)
    return name + ("?" + "&".join(f"{k}={v}" for k, v in options.items()) if options else "")


def path_display_name(path: str) -> str:
    """The last meaningful part of a model path or hub id: ``NAME`` of ``ORG/NAME`` and of a hub snapshot
    ``.../models--ORG--NAME/snapshots/REV[/model.safetensors]``, else the file's stem or the directory."""
    parts = Path(path).parts
    for part in reversed(parts):
        if part.startswith("models--"):
            return part.split("--")[-1]
    last = Path(path)
    if last.stem in ("model", "pytorch_model", "weights") and last.suffix and len(parts) > 1:
        return last.parent.name
    return last.stem if last.suffix in (".safetensors", ".pth", ".pt", ".bin") else last.name


def load_models(specs: Sequence[str], data: DataInfo | None = None, zoo_dir: str | Path | None = None,
                class_map: ClassMapLike | None = None) -> list[Classifier]:
    """:func:`load_model` for each spec, every model aligned with the same ``class_map``; models whose short
    names coincide (e.g. ``timm:NAME`` and ``timm:hf-hub:timm/NAME``) go by their full specs."""
    if not specs:
        raise GktError("no models given")
    models = [load_model(s, data, zoo_dir, class_map) for s in specs]
    names = [m.name for m in models]
    for model, spec in zip(models, specs):
        if names.count(model.name) > 1:
            model.name = spec
    return models
