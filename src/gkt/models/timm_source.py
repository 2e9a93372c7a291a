"""``timm:`` models, named as timm names them:

* ``timm:NAME.TAG`` (e.g. ``timm:resnet18.a1_in1k``) and ``timm:hf-hub:ORG/NAME[@REVISION]`` (a branch,
  tag or commit of the hub repository) — pretrained weights
  through timm's own loader (``timm.create_model(..., pretrained=True)``: the Hugging Face cache, offline
  with ``HF_HUB_OFFLINE=1`` or ``GKT_OFFLINE=1``, a download where a network exists), with the model's own eval transform from
  its ``pretrained_cfg`` (input size, ``crop_pct``, interpolation, mean/std) and its label names (ImageNet
  models: WordNet ids, which class maps also accept as torchvision's or timm's class descriptions);
* ``timm:ARCH`` — a randomly initialised architecture sized to the data (``?pretrained=true``: its default
  pretrained weights, as above);
* ``timm:ARCH@WEIGHTS`` — local weights (safetensors, or a ``.pth`` read with ``weights_only=True``; a
  directory stands for its ``model.safetensors``); a timm ``pretrained_cfg`` (``config.json`` next to the
  weights, or ``?pretrained_cfg=FILE``) sets the preprocessing and class names.

Options: ``img_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``, ``in_chans``, ``classes``,
``num_classes``, ``pretrained`` and the allow-listed constructor options of :data:`TIMM_OPTIONS`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from gkt.core.errors import GktError, refused_pickle
from gkt.core.io import parse_json
from gkt.models.architectures import TimmNet
from gkt.models.classifier import ArchSpec, Classifier, register_source
from gkt.models.offline import hub_cache_only
from gkt.models.sources import check_input_size
from gkt.models.specs import (
    DataInfo,
    ModelSpec,
    allowed_options,
    load_state_into,
    make_preprocess,
    register_spec_source,
    resolve_class_names,
    square_input,
)

HF_HUB = "hf-hub:"
# Options that may reach timm.create_model: architecture settings only (never a path: no checkpoint_path,
# pretrained_cfg, pretrained_cfg_overlay or cache_dir).
TIMM_OPTIONS = frozenset({
    "drop_rate", "drop_path_rate", "drop_block_rate", "global_pool", "img_size", "patch_size", "embed_dim", "depth",
    "num_heads", "mlp_ratio", "qkv_bias", "class_token", "no_embed_class", "reg_tokens", "init_values",
    "dynamic_img_size", "dynamic_img_pad", "pos_embed", "fc_norm", "output_stride", "channels", "layers",
    "widths", "depths", "dims", "num_features", "width_mult", "stem_width", "stem_type", "act_layer",
})


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def check_timm_name(name: str) -> None:
    """A clear error, with the closest names, for an architecture or pretrained tag timm does not know."""
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise GktError(f"timm has no architecture {arch!r}{_suggest(arch, timm.list_models())}")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        raise GktError(f"timm has no pretrained tag {name!r}{_suggest(name, timm.list_pretrained(f'{arch}.*'))}")


@register_source("timm")
def build_timm_net(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> nn.Module:
    """A randomly initialised timm network (``name``: an architecture, optionally with its pretrained tag,
    which sets architecture defaults such as the input size of a ViT)."""
    import timm

    check_timm_name(name)
    kwargs = allowed_options(kwargs, TIMM_OPTIONS, f"timm:{name}")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                  img_size=kwargs.pop("img_size", img_size), **kwargs)
    except TypeError:  # architectures without an img_size argument (most CNNs)
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
        except TypeError as exc:
            raise GktError(f"timm:{name}: bad option ({exc})") from exc
    return TimmNet(model)


def read_timm_config(spec: ModelSpec, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(pretrained_cfg, hub_config)`` of a local-weights timm spec: from ``?pretrained_cfg=FILE`` (a bare
    pretrained_cfg or timm's hub ``config.json``), else from a ``config.json`` holding a ``pretrained_cfg``
    next to the weights (as ``timm.models.push_to_hf_hub``/``save_for_hf`` write it); empty dicts when
    there is none."""
    path = options.pop("pretrained_cfg", None)
    if path is None and spec.weights:
        candidate = Path(spec.weights).parent / "config.json"
        path = candidate if candidate.is_file() else None
    if path is None:
        return {}, {}
    try:
        config = parse_json(Path(path).read_text())
    except (OSError, ValueError) as exc:  # unreadable, not JSON (UTF-8) or nested too deeply
        raise GktError(f"pretrained_cfg {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise GktError(f"pretrained_cfg {path}: expected a JSON object")
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


def imagenet_label_names(num_classes: int) -> tuple[str, ...] | None:
    """WordNet ids of timm's ImageNet subset with ``num_classes`` classes (1k, 21k, ...), else None."""
    from timm.data import ImageNetInfo

    subset = {1000: "imagenet-1k", 1001: "imagenet-1k", 11221: "imagenet-21k-miil", 11821: "imagenet-12k",
              21841: "imagenet-21k", 21842: "imagenet-21k", 21843: "imagenet-21k"}.get(num_classes)
    if subset is None:
        return None
    names = ImageNetInfo(subset).label_names()
    return tuple(["background", *names] if num_classes == len(names) + 1 else names)


def preprocess_options(options: dict[str, Any], cfg: dict[str, Any], what: str) -> dict[str, Any]:
    """Pop ``crop_pct``/``interpolation`` (options win) for :class:`Preprocess`; with a ``pretrained_cfg``,
    its values as timm's own ``resolve_data_config`` resolves them (timm's defaults where the config is
    silent: ``crop_pct`` 0.875, bicubic, centre crop), with ``crop_mode`` ``squash`` resizing both sides."""
    resolved: dict[str, Any] = {"crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "center"}
    if cfg:
        from timm.data import resolve_data_config

        resolved = resolve_data_config(pretrained_cfg=cfg)
    crop_mode = resolved["crop_mode"]
    if crop_mode not in ("center", "squash"):
        raise GktError(f"{what}: crop_mode {crop_mode!r} is not supported (only center and squash)")
    return {"crop_pct": float(options.pop("crop_pct", resolved["crop_pct"])),
            "interpolation": str(options.pop("interpolation", resolved["interpolation"])),
            "squash": crop_mode == "squash"}


def _load_pretrained(spec: ModelSpec, data: DataInfo | None) -> Classifier:
    """A timm model with its pretrained weights, through timm's own loader (the Hugging Face cache)."""
    import timm
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    options = dict(spec.options)
    options.pop("pretrained", None)
    name = spec.target
    if not name.startswith(HF_HUB):
        check_timm_name(name)
    img_size = options.pop("img_size", None)
    mean, std = options.pop("mean", None), options.pop("std", None)
    label_option = {k: options.pop(k) for k in ("classes",) if k in options}
    view_options = {k: options.pop(k) for k in ("crop_pct", "interpolation") if k in options}
    if "num_classes" in options or "in_chans" in options:
        raise GktError(f"timm:{name}: pretrained weights keep their own classes and channels; align classes "
                       "with a class map (--class-map) instead of num_classes")
    kwargs = allowed_options(options, TIMM_OPTIONS, f"timm:{name}")
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    try:
        with hub_cache_only():  # GKT_OFFLINE=1: the Hugging Face cache only
            hub_args = {}
            if name.startswith(HF_HUB):  # the hub config's create_model arguments reach timm: allow-list them first
                from timm.models import load_model_config_from_hf

                model_args = dict(load_model_config_from_hf(name[len(HF_HUB):])[2] or {})
                hub_args = allowed_options({k: v for k, v in model_args.items() if k not in ("num_classes", "in_chans")},
                                           TIMM_OPTIONS, f"timm:{name} (its config.json model_args)")
            try:
                model = timm.create_model(name, pretrained=True, **kwargs)
            except TypeError:
                if "img_size" not in kwargs:
                    raise
                kwargs.pop("img_size")  # a CNN: any input size works
                model = timm.create_model(name, pretrained=True, **kwargs)
    except GktError:
        raise
    except Exception as exc:  # noqa: BLE001 — hub, network and file errors of many types
        if refused_pickle(exc):  # never relay torch's advice to load it unsafely
            raise GktError(f"timm:{name}: its weights file in the Hugging Face cache ($HF_HOME/hub) holds "
                           "Python objects besides tensors (a pickle), which gkt never loads; delete that "
                           "model's folder from the cache and get its safetensors weights (timm downloads "
                           "them where a network exists)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GktError(f"timm:{name}: cannot load its pretrained weights ({first}). Offline, they must be in the "
                       "Hugging Face cache ($HF_HOME/hub); with a network, timm downloads them") from exc
    cfg = dict(model.pretrained_cfg)
    architecture = cfg.get("architecture") or name.partition(".")[0]
    tag = cfg.get("tag")
    registered = f"{architecture}.{tag}" if tag else architecture
    arch_name = registered if timm.is_model(architecture) and registered in timm.list_pretrained(f"{architecture}*") \
        else architecture
    channels, size = square_input(cfg.get("input_size"), f"timm:{name} pretrained_cfg")
    size = int(img_size or size or 224)
    channels = int(channels or 3)
    num_classes = model.num_classes
    label_names = cfg.get("label_names") or (None if label_option else imagenet_label_names(num_classes))
    names = resolve_class_names(label_option, None, f"timm:{name}", label_names, num_classes)
    arch = ArchSpec("timm", arch_name, num_classes, channels, size, {**hub_args, **kwargs})
    pre = make_preprocess(size, channels, mean or cfg.get("mean") or IMAGENET_DEFAULT_MEAN,
                          std or cfg.get("std") or IMAGENET_DEFAULT_STD, spec,
                          **preprocess_options(view_options, cfg, f"timm:{name}"))
    provenance = {"pretrained": name, "pretrained_cfg": {k: cfg[k] for k in
                                                         ("hf_hub_id", "input_size", "crop_pct", "interpolation",
                                                          "mean", "std") if k in cfg}}
    if img_size is not None:  # a size the user chose: one the network can take
        check_input_size(model, channels, size, f"timm:{name}")
    return Classifier(TimmNet(model), arch, pre, names, provenance=provenance)


@register_spec_source("timm",
                      "timm:NAME[.TAG] | timm:hf-hub:ORG/NAME[@REVISION] | timm:ARCH[@WEIGHTS][?k=v&...]",
                      weights=True, options=True)
def load_timm(spec: ModelSpec, data: DataInfo | None, zoo_dir: str | Path | None) -> Classifier:
    if spec.target.startswith(HF_HUB) and spec.weights:  # hf-hub:ORG/NAME@REVISION: a pinned hub revision
        spec = ModelSpec(spec.source, f"{spec.target}@{spec.weights}", None, spec.options)
    pretrained = spec.options.get("pretrained")
    if pretrained is None:
        pretrained = not spec.weights and (spec.target.startswith(HF_HUB) or "." in spec.target)
    if not isinstance(pretrained, bool):
        raise GktError(f"timm:{spec.target}: pretrained must be true or false, not {pretrained!r}")
    if pretrained and spec.weights:
        raise GktError(f"timm:{spec.target}: give either @WEIGHTS or pretrained=true, not both")
    if pretrained:
        return _load_pretrained(spec, data)
    if spec.target.startswith(HF_HUB):
        raise GktError(f"timm:{spec.target}: a hub model comes with its weights; drop pretrained=false")
    spec = _timm_weights(spec)
    options = dict(spec.options)
    options.pop("pretrained", None)
    cfg, hub = read_timm_config(spec, options)
    options = {**hub.get("model_args", {}), **options}  # the hub's create_model arguments; the spec's win
    label_names = options.pop("label_names", None) or hub.get("label_names") or cfg.get("label_names")
    if data is None and "input_size" not in cfg:
        raise GktError(f"timm:{spec.target} needs a dataset to size its input and head (pass --data)")
    cfg_chans, cfg_size = square_input(cfg.get("input_size"), f"timm:{spec.target} pretrained_cfg")
    in_chans = int(options.pop("in_chans", cfg_chans or data.channels))
    img_size = int(options.pop("img_size", cfg_size or data.image_size))
    fits_data = data is not None and in_chans == data.channels
    mean, std = options.pop("mean", cfg.get("mean")), options.pop("std", cfg.get("std"))
    if mean is None or std is None:  # the data's own statistics (measured now) where the channels fit
        default_mean, default_std = data.pixel_stats() if fits_data else ((0.5,) * in_chans, (0.5,) * in_chans)
        mean, std = default_mean if mean is None else mean, default_std if std is None else std
    mean, std = tuple(mean), tuple(std)
    pre_options = preprocess_options(options, cfg, f"timm:{spec.target}")
    names = resolve_class_names(options, data, f"timm:{spec.target}", label_names, hub.get("num_classes"))
    options = allowed_options(options, TIMM_OPTIONS, f"timm:{spec.target}")
    arch = ArchSpec("timm", spec.target, len(names), in_chans, img_size, options)
    model = Classifier.create(arch, make_preprocess(img_size, in_chans, mean, std, spec, **pre_options), names)
    check_input_size(model.net, in_chans, img_size, f"timm:{spec.target}")
    if cfg:
        model.provenance["pretrained_cfg"] = {k: cfg[k] for k in ("input_size", "crop_pct", "interpolation", "mean",
                                                                  "std") if k in cfg}
    if spec.weights:
        load_state_into(model.net.model, spec.weights, f"timm:{spec.target} with {len(names)} classes")
        model.provenance["weights"] = str(Path(spec.weights).resolve())
    return model
