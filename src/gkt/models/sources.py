"""Model sources beyond gkt's own networks and timm:

* ``hf:PATH[?k=v&...]`` — a Hugging Face ``transformers`` image classifier saved in a local directory
  (``save_pretrained``; safetensors weights only, nothing is unpickled). Its image processor gives the
  preprocessing: input size (``crop_size`` when it center-crops, else ``size``; the raw batch is resized
  straight to it), ``image_mean``/``image_std`` (identity when ``do_normalize`` is off; ``rescale_factor``
  honoured) and channels (``config.num_channels``; grey images are replicated). ``config.id2label`` gives
  the class names. Options ``img_size``, ``mean``, ``std`` override the processor.
* ``torchvision:ARCH[@WEIGHTS][?k=v&...]`` — a ``torchvision.models`` architecture with local weights
  (safetensors, or a ``.pth`` read with ``weights_only=True``). Classes: ``classes=FILE`` (JSON list or
  one name per line; ``classes=imagenet1k`` for torchvision's ImageNet-1k names) or ``num_classes=N``,
  default the data's. Preprocessing: ImageNet mean/std at 224×224 unless ``img_size``/``mean``/``std``
  are given; other options go to the architecture (e.g. ``image_size=32`` for a ViT).

Both networks expose as ``forward_features`` the input of their final linear classifier (the last
``nn.Linear`` with one output per class): pooled penultimate features, after the backbone's final
activation or norm — e.g. ViT's normalised CLS token, ResNet's pooled map. Token-wise heads are mean-pooled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkt.core.errors import GktError
from gkt.models.classifier import ArchSpec, Classifier, register_source
from gkt.models.features import capture
from gkt.models.specs import (
    DataInfo,
    ModelSpec,
    load_state_into,
    make_preprocess,
    register_spec_source,
    resolve_class_names,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORED_HF_CONFIG_KEYS = ("_name_or_path", "transformers_version")


class HeadInputNet(nn.Module):
    """Adapter giving a foreign classifier gkt's ``forward_features`` contract: the input of its final
    linear classifier, taken by the one feature tap (:func:`gkt.models.features.capture`), token-pooled."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model = model
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def head(self) -> nn.Linear:
        heads = [m for m in self.model.modules()
                 if isinstance(m, nn.Linear) and m.out_features == self.num_classes]
        if not heads:
            raise GktError(f"{type(self.model).__name__} has no linear classifier with {self.num_classes} outputs "
                           "to take features from")
        return heads[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        features = capture(lambda: self.forward(x), self.head(), what=f"the head of {type(self.model).__name__}")
        return features.mean(tuple(range(1, features.ndim - 1))) if features.ndim > 2 else features


class HFNet(HeadInputNet):
    """A ``transformers`` image classifier: pixel values in, logits out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


# ============================================================================ Hugging Face


def _quiet_transformers() -> Any:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@register_source("hf")
def build_hf_net(name: str, num_classes: int, in_chans: int, img_size: int, config: dict[str, Any]) -> HFNet:
    """A randomly initialised ``transformers`` classifier from its config dict (``name``: its class)."""
    transformers = _quiet_transformers()
    config = dict(config)
    hf_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    if hf_config.num_labels != num_classes:
        hf_config.num_labels = num_classes
    model = transformers.AutoModelForImageClassification.from_config(hf_config)
    return HFNet(model.float(), num_classes)


def hf_config_dict(config: Any) -> dict[str, Any]:
    """A ``transformers`` config as plain JSON (only what differs from the defaults, plus the model type)."""
    d = json.loads(config.to_json_string(use_diff=True))
    return {"model_type": config.model_type, **{k: v for k, v in d.items() if k not in IGNORED_HF_CONFIG_KEYS}}


def hf_preprocess(processor: Any, channels: int, spec: ModelSpec
                  ) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """``(input_size, mean, std)`` on gkt's [0, 1] scale from a ``transformers`` image processor."""
    crops = getattr(processor, "do_center_crop", False) and processor.crop_size
    size = processor.crop_size if crops else processor.size
    height, width = (size.get("height"), size.get("width")) if size is not None else (None, None)
    if height is None and size is not None:
        height = width = size.get("shortest_edge")
    if height is None or height != width:
        raise GktError(f"hf:{spec.target}: the image processor's size {size} is not a square input; "
                       "give img_size=N")
    # The network sees (x * scale - mean) / std with x in [0, 1]; fold the scale into mean and std.
    scale = 255 * (processor.rescale_factor if getattr(processor, "do_rescale", True) else 1.0)
    if getattr(processor, "do_normalize", True) and processor.image_mean is not None:
        mean, std = list(processor.image_mean), list(processor.image_std)
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    return int(height), tuple(m / scale for m in mean), tuple(s / scale for s in std)


@register_spec_source("hf", "hf:PATH[?k=v&...]", options=True)
def load_hf(spec: ModelSpec, data: DataInfo | None, zoo_dir: str | Path | None) -> Classifier:
    """A local ``save_pretrained`` directory holding an image classifier and its image processor."""
    path = Path(spec.target)
    if not (path / "config.json").is_file():
        raise GktError(f"hf:{path}: not a saved transformers model (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise GktError(f"hf:{path}: no safetensors weights (gkt never unpickles .bin checkpoints; convert them)")
    transformers = _quiet_transformers()
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(path, use_safetensors=True)
        processor = transformers.AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise GktError(f"hf:{path}: cannot load it as an image classifier with its image processor ({exc})") from exc
    config = model.config
    names = tuple(config.id2label[i] for i in range(config.num_labels))
    channels = int(getattr(config, "num_channels", 3))
    options = dict(spec.options)
    size, mean, std = hf_preprocess(processor, channels, spec)
    size = int(options.pop("img_size", size))
    mean, std = options.pop("mean", mean), options.pop("std", std)
    if options:
        raise GktError(f"hf:{path}: unknown options {sorted(options)} (known: img_size, mean, std)")
    arch = ArchSpec("hf", type(model).__name__, len(names), channels, size, {"config": hf_config_dict(config)})
    preprocess = make_preprocess(size, channels, mean, std, spec)
    return Classifier(HFNet(model.float(), len(names)), arch, preprocess, names,
                      provenance={"weights": str(path.resolve())})


# ============================================================================ torchvision


@register_source("torchvision")
def build_torchvision_net(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs: Any
                          ) -> HeadInputNet:
    """A randomly initialised ``torchvision.models`` architecture with ``num_classes`` outputs."""
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        close = [m for m in known if name.split("_")[0] in m][:8]
        raise GktError(f"torchvision has no architecture {name!r}" + (f"; did you mean {close}?" if close else ""))
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise GktError(f"torchvision:{name}: bad option ({exc})") from exc
    return HeadInputNet(model, num_classes)


@register_spec_source("torchvision", "torchvision:ARCH[@WEIGHTS][?k=v&...]", weights=True, options=True)
def load_torchvision(spec: ModelSpec, data: DataInfo | None, zoo_dir: str | Path | None) -> Classifier:
    options = dict(spec.options)
    names = resolve_class_names(options, data, f"torchvision:{spec.target}")
    size = int(options.pop("img_size", options.get("image_size", 224)))
    mean, std = options.pop("mean", IMAGENET_MEAN), options.pop("std", IMAGENET_STD)
    arch = ArchSpec("torchvision", spec.target, len(names), 3, size, options)
    model = Classifier.create(arch, make_preprocess(size, 3, mean, std, spec), names)
    if spec.weights:
        load_state_into(model.net.model, spec.weights, f"torchvision:{spec.target} with {len(names)} classes")
        model.provenance["weights"] = str(Path(spec.weights).resolve())
    return model
