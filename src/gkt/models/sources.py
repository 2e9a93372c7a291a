"""Model sources beyond gkt's own networks, timm (:mod:`gkt.models.timm_source`) and torchvision
(:mod:`gkt.models.torchvision_source`):

* ``hf:ORG/NAME[@REVISION]`` or ``hf:DIR[?k=v&...]`` — a Hugging Face ``transformers`` image classifier: a
  hub id, optionally pinned to a revision (from the Hugging Face cache through ``huggingface_hub``, offline
  with ``HF_HUB_OFFLINE=1``; downloaded where a network exists) or a ``save_pretrained`` directory. Safetensors weights only (nothing is
  unpickled) and never the directory's own code (``trust_remote_code=False``; a config with ``auto_map``
  is refused). Its image processor gives the preprocessing: input size (``crop_size`` when it
  centre-crops, with ``crop_pct`` = crop / resize size; else ``size``), interpolation (``resample``),
  ``image_mean``/``image_std`` (identity when ``do_normalize`` is off; ``rescale_factor`` honoured) and
  channels (``config.num_channels``; grey images are replicated). ``config.id2label`` gives the class
  names. Only image processors whose transform gkt reproduces are accepted (ViT, DeiT, BEiT, ConvNeXt/ResNet,
  EfficientNet, MobileNet, BiT/DINOv2, LeViT, ... :data:`gkt.models.hf_processors.PROCESSORS`). Options ``img_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``, ``squash``,
  ``crop_rounding`` override the processor.

Their networks (and torchvision's) expose as ``forward_features`` the input of their final linear classifier (the last
``nn.Linear`` with one output per class): pooled penultimate features, after the backbone's final
activation or norm — e.g. ViT's normalised CLS token, ResNet's pooled map. Token-wise heads are mean-pooled.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkt.core.errors import GktError
from gkt.core.io import parse_json
from gkt.models.classifier import ArchSpec, Classifier, register_source
from gkt.models.features import capture
from gkt.models.hf_processors import hf_preprocess
from gkt.models.offline import hub_cache_only
from gkt.models.specs import (
    DataInfo,
    ModelSpec,
    make_preprocess,
    register_spec_source,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORED_HF_CONFIG_KEYS = ("_name_or_path", "transformers_version")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
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

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__(model, num_classes)
        # Vision transformers interpolate their position embeddings to another input size only when asked.
        self.interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interpolate:
            return self.model(pixel_values=x, interpolate_pos_encoding=True).logits
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
    refuse_remote_code(config, f"hf:{name}")
    try:
        hf_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
        if hf_config.num_labels != num_classes:
            hf_config.num_labels = num_classes
        model = transformers.AutoModelForImageClassification.from_config(hf_config, trust_remote_code=False)
    except (KeyError, ValueError, TypeError) as exc:
        raise GktError(f"hf:{name}: cannot build it from its config ({exc})") from exc
    net = HFNet(model.float(), num_classes)
    check_input_size(net, in_chans, img_size, f"hf:{name}")
    return net


def check_input_size(net: nn.Module, in_chans: int, img_size: int, what: str) -> None:
    """Refuse, when the model is built, an input size its network cannot take (a patch grid of fixed size, a
    kernel larger than the image): one forward pass of a blank image."""
    training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, in_chans, img_size, img_size))
    except (RuntimeError, ValueError, AssertionError) as exc:  # torchvision's ViT asserts its image size
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise GktError(f"{what} cannot take {img_size}x{img_size} px input ({reason}); give it the input size it "
                       "was made for (drop --img-size / ?img_size=N) or another one it accepts") from None
    finally:
        net.train(training)


def refuse_remote_code(config: dict[str, Any], what: str) -> None:
    """gkt never runs code that came with a model: a config that names its own code is refused."""
    if "auto_map" in config or "custom_pipelines" in config:
        raise GktError(f"{what}: its config names Python code of its own (auto_map); gkt never runs code that "
                       "comes with a model. Use a model whose architecture is part of transformers")


def hf_config_dict(config: Any) -> dict[str, Any]:
    """A ``transformers`` config as plain JSON (only what differs from the defaults, plus the model type)."""
    d = parse_json(config.to_json_string(use_diff=True))
    return {"model_type": config.model_type, **{k: v for k, v in d.items() if k not in IGNORED_HF_CONFIG_KEYS}}


def hf_model_dir(target: str) -> Path:
    """A ``save_pretrained`` directory, or the cached snapshot of hub id ``ORG/NAME[@REVISION]`` (a branch,
    tag or commit; ``huggingface_hub``: offline from the cache with ``HF_HUB_OFFLINE=1``, else downloaded)."""
    path = Path(target)
    if path.is_dir():
        return path
    repo, at, revision = target.partition("@")
    if not HUB_ID.fullmatch(repo) or path.exists() or (at and not revision):
        raise GktError(f"hf:{target}: neither a directory nor a Hugging Face hub id ORG/NAME[@REVISION]")
    from huggingface_hub import snapshot_download

    try:
        with hub_cache_only():
            return Path(snapshot_download(repo, revision=revision or None,
                                          allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as exc:  # noqa: BLE001 — hub, network and file errors of many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GktError(f"hf:{target}: not in the Hugging Face cache ($HF_HOME/hub) and not downloadable ({first}); "
                       "check the name and revision, or download it where a network exists") from exc


def _mismatch(path: Path) -> str:
    """What differs between a transformers directory's config and its weights: the number of labels and the
    outputs of its classifier head, where both can be read."""
    from safetensors import safe_open

    try:
        labels = len(parse_json((path / "config.json").read_text()).get("id2label") or {})
        heads = {}
        for file in sorted(path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                names = [k for k in f.keys()  # noqa: SIM118 (safe_open is not iterable)
                         if k.endswith("weight") and ("classifier" in k or "head" in k)]
                heads |= {k: f.get_slice(k).get_shape() for k in names}
        head, shape = next((k, s) for k, s in reversed(heads.items()) if len(s) == 2)
    except (OSError, ValueError, StopIteration, AttributeError):
        return "a layer's size differs"
    if labels and shape[0] != labels:
        return f"id2label lists {labels} labels but the head {head} has {shape[0]} outputs"
    return "a layer's size differs"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        config = parse_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise GktError(f"{what}: cannot read {path.name} ({exc})") from exc
    if not isinstance(config, dict):
        raise GktError(f"{what}: {path.name} is not a JSON object")
    return config


@register_spec_source("hf", "hf:ORG/NAME[@REVISION] | hf:DIR[?k=v&...]", options=True)
def load_hf(spec: ModelSpec, data: DataInfo | None, zoo_dir: str | Path | None) -> Classifier:
    """A hub id or a local ``save_pretrained`` directory holding an image classifier and its image processor."""
    what = f"hf:{spec.target}"
    path = hf_model_dir(spec.target)
    if not (path / "config.json").is_file():
        raise GktError(f"{what}: not a saved transformers model (no config.json in {path})")
    for name in ("config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            refuse_remote_code(_read_json(path / name, what), what)
    if not any(path.glob("*.safetensors")):
        raise GktError(f"{what}: no safetensors weights (gkt never unpickles .bin checkpoints; convert them)")
    transformers = _quiet_transformers()
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(path, use_safetensors=True,
                                                                             trust_remote_code=False)
        processor = transformers.AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise GktError(f"{what}: cannot load it as an image classifier with its image processor ({exc})") from exc
    except RuntimeError as exc:  # weights of other sizes than the config's layers (a size mismatch)
        raise GktError(f"{what}: its weights do not fit the network its config.json describes "
                       f"({_mismatch(path)}); make config.json (id2label / num_labels and the layer sizes) "
                       "match the weights") from exc
    config = model.config
    names = tuple(config.id2label[i] for i in range(config.num_labels))
    channels = int(getattr(config, "num_channels", 3))
    options = dict(spec.options)
    pre = hf_preprocess(processor, channels, spec)
    pre = {key: options.pop("img_size" if key == "size" else key, value) for key, value in pre.items()}
    if options:
        raise GktError(f"{what}: unknown options {sorted(options)} (known: img_size, mean, std, crop_pct, "
                       "interpolation, squash, crop_rounding)")
    arch = ArchSpec("hf", type(model).__name__, len(names), channels, int(pre["size"]),
                    {"config": hf_config_dict(config)})
    preprocess = make_preprocess(channels=channels, spec=spec, **pre)
    net = HFNet(model.float(), len(names))
    check_input_size(net, channels, int(pre["size"]), what)
    return Classifier(net, arch, preprocess, names, provenance={"weights": str(path.resolve())})
