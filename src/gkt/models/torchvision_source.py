"""``torchvision:`` models, named as torchvision names them:

* ``torchvision:ARCH?weights=ENUM`` or ``torchvision:ARCH:ENUM`` — a ``torchvision.models`` architecture with
  its pretrained weights (``IMAGENET1K_V1``, ``DEFAULT``, or as torchvision also writes them,
  ``ResNet18_Weights.IMAGENET1K_V1``) from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``, downloaded by torch.hub where a network exists, never under
  ``GKT_OFFLINE=1``/``HF_HUB_OFFLINE=1``; read with ``weights_only=True``), its class names (``meta["categories"]``) and its eval transform
  (``weights.transforms()``: resize size, crop size, interpolation, mean/std).
* ``torchvision:ARCH[@WEIGHTS][?k=v&...]`` — local weights (safetensors, or a ``.pth`` read with
  ``weights_only=True``) or none. Classes: ``classes=FILE`` (JSON list or one name per line;
  ``classes=imagenet1k`` for torchvision's ImageNet-1k names) or ``num_classes=N``, default the data's.
  Preprocessing: ImageNet mean/std at 224×224 unless ``img_size``/``mean``/``std`` are given; the
  allow-listed options of :data:`TORCHVISION_OPTIONS` go to the architecture (e.g. ``image_size=32``).

The network exposes as ``forward_features`` the input of its final linear classifier
(:class:`gkt.models.sources.HeadInputNet`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from gkt.core.errors import GktError, refused_pickle
from gkt.core.hashing import file_sha256
from gkt.core.io import file_stamp
from gkt.models.classifier import ArchSpec, Classifier, register_source
from gkt.models.hf_processors import crop_fraction
from gkt.models.offline import offline_reason
from gkt.models.sources import IMAGENET_MEAN, IMAGENET_STD, HeadInputNet, check_input_size
from gkt.models.specs import (
    DataInfo,
    ModelSpec,
    allowed_options,
    load_state_into,
    make_preprocess,
    register_spec_source,
    resolve_class_names,
)

# Options that may reach torchvision.models.get_model: architecture settings only.
TORCHVISION_OPTIONS = frozenset({
    "image_size", "patch_size", "dropout", "attention_dropout", "stochastic_depth_prob", "width_per_group",
    "groups", "aux_logits", "transform_input", "init_weights", "num_layers", "num_heads", "hidden_dim", "mlp_dim",
    "width_mult", "layer_scale", "window_size",
})


@register_source("torchvision")
def build_torchvision_net(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs: Any
                          ) -> HeadInputNet:
    """A randomly initialised ``torchvision.models`` architecture with ``num_classes`` outputs."""
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        raise GktError(f"torchvision has no architecture {name!r}" + (f"; did you mean {', '.join(close)}?"
                                                                        if close else ""))
    kwargs = allowed_options(kwargs, TORCHVISION_OPTIONS, f"torchvision:{name}")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise GktError(f"torchvision:{name}: bad option ({exc})") from exc
    net = HeadInputNet(model, num_classes)
    check_input_size(net, in_chans, img_size, f"torchvision:{name}")
    return net


def torchvision_weights(arch: str, enum_name: str) -> Any:
    """The ``torchvision.models`` weights enum member ``enum_name`` (or ``DEFAULT``) of ``arch``, also
    written as torchvision writes it, ``ENUM_CLASS.MEMBER`` (``ResNet18_Weights.IMAGENET1K_V1``)."""
    import torchvision

    if arch not in torchvision.models.list_models():
        close = difflib.get_close_matches(arch, torchvision.models.list_models(), n=5, cutoff=0.6)
        raise GktError(f"torchvision has no architecture {arch!r}" + (f"; did you mean {', '.join(close)}?"
                                                                        if close else ""))
    enum = torchvision.models.get_model_weights(arch)
    members = list(enum.__members__)
    owner, dot, member = str(enum_name).rpartition(".")
    if dot:
        if owner != enum.__name__:
            raise GktError(f"torchvision:{arch}: weights {enum_name!r} are not {arch}'s: its weights are "
                           f"{enum.__name__}.MEMBER ({', '.join(members)})")
        enum_name = member
    if enum_name not in members:
        close = difflib.get_close_matches(str(enum_name), members, n=5, cutoff=0.4)
        raise GktError(f"torchvision:{arch}: no weights {enum_name!r}; known: {', '.join(members)}"
                       + (f" (closest: {', '.join(close)})" if close else ""))
    return enum[enum_name]


_VERIFIED_HUB_FILES: set[tuple[str, int, int, int]] = set()  # (path, size, mtime, ctime) verified


def verify_torch_hub_file(path: Path, what: str) -> None:
    """A file in the torch hub cache is the one its name describes: its SHA-256 begins with the hash in its
    name (``resnet18-f37072fd.pth``), as torch.hub checks on download; else it is refused unopened."""
    import torch.hub

    stamp = (str(path), *file_stamp(path.stat()))
    if stamp in _VERIFIED_HUB_FILES:
        return
    prefix = torch.hub.HASH_REGEX.search(path.name)
    if prefix is None or not prefix[1]:
        return  # a name without a hash: nothing to check it against
    if not file_sha256(path).startswith(prefix[1]):
        raise GktError(f"{what}: {path} is not the official weights file: its SHA-256 does not begin with "
                       f"{prefix[1]} as its name says (damaged or replaced); delete it (torch downloads the "
                       "official one, its hash checked, where a network exists)")
    _VERIFIED_HUB_FILES.add(stamp)


def _load_torchvision_pretrained(spec: ModelSpec, options: dict[str, Any]) -> Classifier:
    """``torchvision:ARCH?weights=ENUM``: the weights from the torch hub cache (torch.hub's own code path;
    ``weights_only=True``), their categories and eval transform."""
    import torch.hub

    weights = torchvision_weights(spec.target, str(options.pop("weights")))
    what = f"torchvision:{spec.target}?weights={weights.name}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file() and (offline := offline_reason()) is not None:  # before building the network
        raise GktError(f"{what}: {cached} is not in the torch hub cache and {offline} forbids downloading it; "
                       f"copy {weights.url} there (or set $TORCH_HOME to a cache that has it), or unset "
                       f"{offline.partition('=')[0]} where a network exists")
    names = tuple(weights.meta["categories"])
    transform = weights.transforms()
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    if spec.target.startswith("vit_"):  # ViTs are built for the weights' input size
        options.setdefault("image_size", crop)
    pre = {"size": crop, "mean": tuple(transform.mean), "std": tuple(transform.std), "crop_pct": crop_fraction(crop, resize),
           "interpolation": transform.interpolation.value}
    pre = {key: options.pop("img_size" if key == "size" else key, value) for key, value in pre.items()}
    if "classes" in options or "num_classes" in options:
        raise GktError(f"{what}: pretrained weights keep their own classes; align them with a class map")
    arch = ArchSpec("torchvision", spec.target, len(names), 3, int(pre["size"]), options)
    model = Classifier.create(arch, make_preprocess(channels=3, spec=spec, **pre), names)
    if cached.is_file():  # torch checks the hash its name carries only when it downloads the file
        verify_torch_hub_file(cached, what)
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False, check_hash=True,
                                                   weights_only=True)
    except Exception as exc:  # noqa: BLE001 — network, pickle and file errors of many types
        if refused_pickle(exc):  # never relay torch's advice to load it unsafely
            raise GktError(f"{what}: {cached} holds Python objects besides tensors (a pickle), which gkt "
                           "never loads; it is not the official weights file: delete it (torch downloads the "
                           "official one, its hash checked, where a network exists)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if cached.is_file():
            raise GktError(f"{what}: cannot load {cached} ({first}); the file in the torch hub cache is "
                           "damaged: delete it (torch downloads it again where a network exists)") from exc
        raise GktError(f"{what}: cannot load {cached} ({first}); offline, put the weights file there "
                       "(torch hub cache, $TORCH_HOME/hub/checkpoints)") from exc
    try:
        model.net.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise GktError(f"{cached} does not fit {what}: {' '.join(str(exc).split())[:400]}") from exc
    model.provenance["weights"] = str(cached)
    return model


@register_spec_source("torchvision", "torchvision:ARCH[?weights=ENUM] | torchvision:ARCH:ENUM | "
                      "torchvision:ARCH[@WEIGHTS][?k=v&...]",
                      weights=True, options=True)
def load_torchvision(spec: ModelSpec, data: DataInfo | None, zoo_dir: str | Path | None) -> Classifier:
    options = dict(spec.options)
    arch, colon, enum = spec.target.partition(":")
    if colon:  # torchvision:ARCH:ENUM, the same as torchvision:ARCH?weights=ENUM
        if "weights" in options:
            raise GktError(f"torchvision:{spec.target}: give the weights once (ARCH:ENUM or ?weights=ENUM)")
        spec, options["weights"] = ModelSpec(spec.source, arch, spec.weights, spec.options), enum
    if "weights" in options:
        if spec.weights:
            raise GktError(f"torchvision:{spec.target}: give either @WEIGHTS (a file) or weights=ENUM, not both")
        return _load_torchvision_pretrained(spec, options)
    names = resolve_class_names(options, data, f"torchvision:{spec.target}")
    size = int(options.pop("img_size", options.get("image_size", 224)))
    mean, std = options.pop("mean", IMAGENET_MEAN), options.pop("std", IMAGENET_STD)
    arch = ArchSpec("torchvision", spec.target, len(names), 3, size, options)
    model = Classifier.create(arch, make_preprocess(size, 3, mean, std, spec), names)
    if spec.weights:
        load_state_into(model.net.model, spec.weights, f"torchvision:{spec.target} with {len(names)} classes")
        model.provenance["weights"] = str(Path(spec.weights).resolve())
    return model
