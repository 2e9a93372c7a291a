"""Class maps: align a model's classes to another label space (e.g. a 1000-class ImageNet teacher to a
10-class student on the shared classes, or the same classes in another order).

A map is ``{target_class: source_class_or_list}`` (JSON or YAML file, or a dict); a source class is its
name (exact, else case-insensitive) or its index. Target classes the map leaves out are matched by name
(case-insensitive), and so are those whose mapped classes a model does not have while it has the target
class itself (one map serves models named in different vocabularies). ImageNet-1k models name their classes in one of three vocabularies (WordNet ids like
``n01440764`` in timm, ``tench`` in torchvision, ``tench, Tinca tinca`` in timm's descriptions and
Hugging Face configs); a name from any of them finds its class in a model using another, so one class map
per data set aligns every model. The mapped model's logit for a target class is the **logsumexp of the logits of its
source classes**: its softmax is then the model's probability mass on those classes renormalised over
all mapped classes (unmapped source classes drop out). The mapped model is a plain
:class:`~gkt.models.Classifier` (its net is a :class:`ClassMappedNet`), so every method and trainer works
unchanged, its checkpoints round-trip, and caches keyed on architecture and weights tell it apart.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkt.core.errors import GktError
from gkt.core.io import parse_json
from gkt.core.limits import load_yaml, read_text_input
from gkt.models.classifier import ArchSpec, Classifier, register_source

log = logging.getLogger(__name__)

ClassMapLike = str | os.PathLike | Mapping[str, Any]
AUTO = "auto"
SOURCE_CLASSES = "class_map_source_classes"  # provenance key: the mapped network's own class names
WORDNET_ID = re.compile(r"n\d{8}")


class ClassMappedNet(nn.Module):
    """``base``'s logits aggregated into target classes: ``logit[s] = logsumexp(base_logits[groups[s]])``."""

    def __init__(self, base: nn.Module, groups: Sequence[Sequence[int]]):
        super().__init__()
        width = max(len(g) for g in groups)
        index = torch.tensor([list(g) + [g[0]] * (width - len(g)) for g in groups], dtype=torch.long)
        valid = torch.tensor([[True] * len(g) + [False] * (width - len(g)) for g in groups])
        self.base = base
        # Persistent buffers: the map is part of the weights, so their hash tells mapped models apart.
        self.register_buffer("index", index)
        self.register_buffer("valid", valid)

    def aggregate(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` source logits → ``[B, S]`` target logits."""
        grouped = logits[:, self.index].masked_fill(~self.valid, float("-inf"))
        return torch.logsumexp(grouped, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.base(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.forward_features(x)


@register_source("class_map")
def build_class_mapped_net(name: str, num_classes: int, in_chans: int, img_size: int, base: dict[str, Any],
                           groups: Sequence[Sequence[int]]) -> ClassMappedNet:
    """Rebuild a mapped net from its arch kwargs (``base``: the source model's arch; ``groups``)."""
    if num_classes != len(groups):
        raise GktError(f"a class-mapped {name} has {len(groups)} classes, not {num_classes}")
    return ClassMappedNet(ArchSpec.from_dict(base).build(), groups)


def read_class_map(path: str | os.PathLike) -> dict[str, Any]:
    """``{target_class: source_class_or_list}`` from a JSON or YAML file."""
    path = Path(path)
    text = read_text_input(path, "class map")
    try:
        if path.suffix in (".yaml", ".yml"):
            mapping = load_yaml(text, f"class map {path}")
        else:
            mapping = parse_json(text)
    except GktError:
        raise
    except Exception as exc:  # yaml and json raise their own error types
        raise GktError(f"class map {path}: cannot parse it ({exc})") from exc
    if not isinstance(mapping, dict):
        raise GktError(f"class map {path}: expected a mapping {{target_class: model_class_or_list}}")
    refs = [ref for value in mapping.values() for ref in (value if isinstance(value, (list, tuple)) else [value])]
    bad = [ref for ref in refs if isinstance(ref, bool) or not isinstance(ref, (str, int))]
    if bad:
        raise GktError(f"class map {path}: {bad[0]!r} is not a class name or index")
    twice = sorted({str(r) for r in refs if sum(str(o).casefold() == str(r).casefold() for o in refs) > 1})
    if twice:
        raise GktError(f"class map {path} sends model classes {twice} to several target classes; each model class "
                       "may feed one target class")
    return mapping


@functools.cache
def imagenet_vocabularies() -> tuple[tuple[str, ...], ...]:
    """The ImageNet-1k class names, index-aligned, as WordNet ids, timm descriptions and torchvision names."""
    from timm.data import ImageNetInfo
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    info = ImageNetInfo("imagenet-1k")
    return tuple(info.label_names()), tuple(info.label_descriptions()), tuple(_IMAGENET_CATEGORIES)


@functools.cache
def _aliases(names: tuple[str, ...]) -> dict[str, int]:
    """For a label space that is ImageNet-1k in one vocabulary: every vocabulary's unambiguous names
    (case-folded; a description also by its first name) → class index. Empty for any other label space."""
    if len(names) != 1000:
        return {}
    vocabularies = imagenet_vocabularies()
    folded = tuple(n.casefold() for n in names)
    if not any(folded == tuple(v.casefold() for v in vocab) for vocab in vocabularies):
        return {}
    pairs = {(key, index) for vocab in vocabularies for index, name in enumerate(vocab)
             for key in (name.casefold(), name.split(",")[0].strip().casefold())}
    count = Counter(key for key, _ in pairs)
    return {key: index for key, index in pairs if count[key] == 1}


def _lookup(ref: Any, names: Sequence[str]) -> int | str:
    """Index of a source class given by index, exact name, case-insensitive name or (ImageNet-1k) a name
    from another vocabulary; an error text otherwise."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        return ref if 0 <= ref < len(names) else f"index {ref} (out of range 0..{len(names) - 1})"
    if not isinstance(ref, str):
        return f"{ref!r} (not a class name or index)"
    for matches in ([i for i, n in enumerate(names) if n == ref],
                    [i for i, n in enumerate(names) if n.casefold() == ref.casefold()]):
        if len(matches) == 1:
            return matches[0]
        if matches:
            return f"{ref!r} (ambiguous: indices {matches}; give the index)"
    alias = _aliases(tuple(names)).get(ref.casefold())
    return alias if alias is not None else repr(ref)


def resolve_groups(target: Sequence[str], source: Sequence[str], mapping: Mapping[str, Any] | None = None
                   ) -> list[list[int]]:
    """Source class indices for each target class; a clear error naming every class that cannot be matched."""
    mapping = dict(mapping or {})
    extra = sorted(set(mapping) - set(target))
    if extra:
        raise GktError(f"class map names classes the target label space does not have: {extra}")
    groups, unmatched, own_name = [], [], []
    for name in target:
        refs = mapping.get(name, name)
        refs = list(refs) if isinstance(refs, (list, tuple)) else [refs]
        found = [_lookup(ref, source) for ref in refs]
        bad = [f for f in found if isinstance(f, str)]
        if bad and name in mapping and isinstance(own := _lookup(name, source), int):
            own_name.append(f"{name} → {', '.join(bad)}")  # a map for models in another vocabulary (or a typo)
            found, bad = [own], []
        if bad or not refs:
            unmatched.append(f"{name} → {', '.join(bad) or 'nothing'}")
        groups.append([f for f in found if isinstance(f, int)])
    if own_name:
        log.warning("class map: %d of its entries name no class of this model (e.g. %s); the model has those "
                    "target classes under their own names and uses them", len(own_name), own_name[0])
    if unmatched:
        raise GktError(f"the model's class names differ from the target label space: cannot match {len(unmatched)} "
                       f"of {len(target)} target classes to the model's {len(source)} classes: {'; '.join(unmatched)} "
                       "(give a class map, --class-map FILE with {target_class: model_class_or_list})")
    twice = sorted(source[i] for i, n in Counter(i for g in groups for i in g).items() if n > 1)
    if twice:
        raise GktError(f"class map sends model classes {twice} to several target classes; each model class "
                       "may feed one target class")
    return groups


_ANNOUNCED: set[tuple[str, tuple[str, ...]]] = set()


def _announce(model: Classifier, class_names: Sequence[str], groups: Sequence[Sequence[int]]) -> None:
    """One line (once per model and label space) when classes were aligned by name without a class map,
    e.g. an image folder named by WordNet ids and a 1000-class ImageNet model."""
    key = (model.name, tuple(class_names))
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    wordnet = all(WORDNET_ID.fullmatch(name) for name in class_names)
    log.info("%s: the data's %d classes%s matched by name to %d of its %d classes (%s → %s, ...); give --class-map "
             "FILE to align other classes", model.name, len(class_names), " (WordNet ids)" if wordnet else "",
             sum(map(len, groups)), model.num_classes, class_names[0], model.class_names[groups[0][0]])


def apply_class_map(model: Classifier, class_names: Sequence[str], class_map: ClassMapLike = AUTO,
                    data_classes: Sequence[str] = ()) -> Classifier:
    """``model`` with its classes aligned to ``class_names``. ``class_map``: a file, a dict, or ``"auto"``
    (every target class matched by name, case-insensitively or through the ImageNet vocabularies). A map
    given is always read and checked (entries for ``data_classes``, the data set's classes before a class
    selection, that the selection left out are unused, not errors); ``model`` itself is returned when it
    already predicts ``class_names`` in order and the map sends each class to itself."""
    if isinstance(class_map, Mapping):
        mapping = dict(class_map)
    elif str(class_map) == AUTO:
        mapping = {}
    else:
        mapping = read_class_map(class_map)
    unused = set(data_classes) - set(class_names)
    mapping = {target: source for target, source in mapping.items() if target not in unused}
    if list(model.class_names) == list(class_names) and not mapping:
        return model
    try:
        groups = resolve_groups(class_names, model.class_names, mapping)
    except GktError as exc:
        if mapping or model.num_classes == len(class_names):
            raise
        raise GktError(f"{model.name} predicts {model.num_classes} classes, the data has {len(class_names)}: give a "
                       f"class map ({{target_class: model_class_or_list}}) to align them; {exc}") from exc
    if groups == [[i] for i in range(model.num_classes)]:  # same order, names differ only in case
        return Classifier(model.net, model.arch, model.preprocess, class_names, model.provenance, model.name)
    if not mapping and model.num_classes != len(class_names):
        _announce(model, class_names, groups)
    arch = ArchSpec("class_map", model.arch.name, len(class_names), model.arch.in_chans, model.arch.img_size,
                    {"base": model.arch.to_dict(), "groups": groups})
    provenance = {**model.provenance, "class_map": {name: [model.class_names[i] for i in g]
                                                    for name, g in zip(class_names, groups)},
                  SOURCE_CLASSES: list(model.class_names)}
    net = ClassMappedNet(model.net, groups)
    return Classifier(net, arch, model.preprocess, class_names, provenance=provenance, name=model.name)
