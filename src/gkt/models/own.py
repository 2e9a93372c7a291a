"""A user's own ``nn.Module`` as a gkt model (Python API): :func:`wrap_module` gives it its preprocessing and
class names, so every gkt method takes it; its checkpoints save as usual and reload with
``load_module_checkpoint(path, MyNet(...))`` (gkt never imports code a file names, so the module comes from
the caller)::

    from gkt.models import Preprocess, load_module_checkpoint, save_checkpoint, wrap_module

    model = wrap_module(MyNet(), ["cat", "dog"], Preprocess(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    save_checkpoint(model, "runs/mynet")
    again = load_module_checkpoint("runs/mynet", MyNet())

The module maps a normalised ``[B, C, H, W]`` batch to ``[B, len(class_names)]`` logits; its features (for
KDEP and the feature-based methods) are the input of its last ``nn.Linear`` with one output per class.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import nn

from gkt.core.errors import GktError
from gkt.models.checkpoint import load_checkpoint, read_sidecar
from gkt.models.classifier import ArchSpec, Classifier, register_source
from gkt.models.preprocess import Preprocess
from gkt.models.sources import HeadInputNet

SOURCE = "module"


def module_type(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def wrap_module(module: nn.Module, class_names: Sequence[str], preprocess: Preprocess, name: str | None = None
                ) -> Classifier:
    """``module`` as a :class:`Classifier` taking raw images, normalised by ``preprocess``."""
    if not isinstance(module, nn.Module):
        raise GktError(f"wrap_module takes a torch nn.Module, not {type(module).__name__}")
    arch = ArchSpec(SOURCE, module_type(module), len(class_names), preprocess.channels, preprocess.input_size)
    return Classifier(HeadInputNet(module, len(class_names)), arch, preprocess, class_names,
                      name=name or type(module).__name__)


def load_module_checkpoint(path: str | os.PathLike, module: nn.Module) -> Classifier:
    """A checkpoint of a wrapped module, its weights loaded into the caller's fresh ``module`` (same type)."""
    arch = ArchSpec.from_dict(read_sidecar(path)["arch"])
    if arch.source != SOURCE:
        raise GktError(f"{path} holds a {arch.describe()} model, not a wrapped module; load it with load_checkpoint")
    if module_type(module) != arch.name:
        raise GktError(f"{path} holds a {arch.name}, not a {module_type(module)}")
    return load_checkpoint(path, net=HeadInputNet(module, arch.num_classes))


@register_source(SOURCE)
def build_module_net(name: str, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    raise GktError(f"this checkpoint holds a user's own module ({name}); gkt never imports code a file names: "
                   f"load it in Python with gkt.models.load_module_checkpoint(path, {name.rsplit('.', 1)[-1]}(...))")
