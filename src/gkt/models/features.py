"""One feature tap: a layer's input or output (by default the penultimate features) of any classifier,
captured by a forward hook that lives only during the call and stops the forward pass there. Used by
KDEP (teacher and student layers), head adaptation (the head's input), contrastive transfer (CD, CRD)
and the ``hf:``/``torchvision:`` networks' ``forward_features`` (their final linear layer's input)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gkt.core.errors import GktError
from gkt.models.architectures import TimmNet
from gkt.models.classifier import Classifier


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → mean over space, ``[B, N, D]`` (tokens) → mean over tokens, ``[B, D]`` as is."""
    if x.ndim == 4:
        return x.mean((2, 3))
    if x.ndim == 3:
        return x.mean(1)
    if x.ndim == 2:
        return x
    raise GktError(f"cannot pool a feature of shape {tuple(x.shape)} to [B, D]")


class _Captured(Exception):
    """Raised from a hook to stop the forward pass once the wanted feature is computed."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


def capture(forward: Callable[[], object], module: nn.Module, output: bool = False, what: str = "") -> torch.Tensor:
    """Run ``forward()`` until ``module`` (``what``, for the error) is reached and return what it receives
    (its first positional input) or, with ``output``, what it returns; the rest of the forward is skipped."""

    def stop(value: torch.Tensor) -> None:
        raise _Captured(value)

    handle = (module.register_forward_hook(lambda m, i, o: stop(o)) if output else
              module.register_forward_pre_hook(lambda m, args: stop(args[0])))
    try:
        forward()
    except _Captured as captured:
        return captured.value
    finally:
        handle.remove()
    raise GktError(f"{what or type(module).__name__} was not reached in the forward pass")


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.Mish, nn.ELU)


def _dummy_batch(model: Classifier, n: int = 2) -> torch.Tensor:
    """A seeded random raw batch (float in [0, 1]) of the model's input shape, on its device."""
    p = model.preprocess
    x = torch.rand(n, p.channels, p.input_size, p.input_size, generator=torch.Generator().manual_seed(0))
    return x.to(model.mean.device)


def _timm_pre_activation(model: Classifier) -> str:
    """For timm nets whose trunk ends in an activation (ResNets: ``layer4[-1].act2``), that module's
    input. The candidate is the last activation module; it is kept only if a float64 dummy forward shows
    that it runs once and its pooled output *is* the net's pooled pre-logits feature (float64 so that
    a freshly initialised BatchNorm after it, ≈ identity, is still told apart). Otherwise ``features``."""
    candidates = [name for name, m in model.net.named_modules() if isinstance(m, ACTIVATIONS)]
    if not candidates:
        return "features"
    probe = model.clone().double().eval()
    outputs: list[torch.Tensor] = []
    handle = probe.net.get_submodule(candidates[-1]).register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        with torch.no_grad():
            features = probe.features(_dummy_batch(probe).double())
    finally:
        handle.remove()
    if len(outputs) != 1 or outputs[0].ndim < 2:
        return "features"
    pooled = global_pool(outputs[0])
    same = pooled.shape == features.shape and torch.allclose(pooled, features, rtol=1e-10, atol=1e-12)
    return candidates[-1] if same else "features"


# Per network type: how ``auto`` resolves to a layer. gkt's own nets expose the pre-activation feature
# through ``forward_features`` by design.
FEATURE_RESOLVERS: dict[type, Callable[[Classifier], str]] = {TimmNet: _timm_pre_activation}


class FeatureTap:
    """``images -> [B, D]`` penultimate, globally pooled features of a classifier.

    ``layer``: ``auto`` (pre-final-activation: ``forward_features`` for gkt nets, a detected hook for
    timm CNNs), ``features`` (the net's ``forward_features``), ``NAME`` (the *input* of submodule
    ``NAME`` of ``model.net``, pooled) or ``NAME:out`` (its output). ``dim`` is measured by a dummy
    forward. Hooks live only during a call (and stop the forward there), so models stay clean."""

    def __init__(self, model: Classifier, layer: str = "auto"):
        self.model = model
        self.requested = layer
        resolver = next((fn for cls, fn in FEATURE_RESOLVERS.items() if isinstance(model.net, cls)), None)
        self.layer = (resolver(model) if resolver else "features") if layer == "auto" else layer
        self.module: nn.Module | None = None
        self.take_output = False
        if self.layer != "features":
            name, _, where = self.layer.partition(":")
            if where not in ("", "in", "out"):
                raise GktError(f"feature layer {self.layer!r}: suffix must be ':in' or ':out'")
            try:
                self.module = model.net.get_submodule(name)
            except AttributeError as exc:
                names = [n for n, _ in model.net.named_modules() if n][-8:]
                raise GktError(f"{model.name} has no layer {name!r} (last layers: {names})") from exc
            self.take_output = where == "out"
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.dim = int(self(_dummy_batch(model)).shape[1])
        model.train(was_training)

    def __call__(self, images: torch.Tensor, prepared: torch.Tensor | None = None) -> torch.Tensor:
        """The tapped features of raw ``images`` (``prepared``: the model's normalised input, used instead)."""
        if self.module is None:
            return self.model.features(images, prepared)
        return global_pool(capture(lambda: self.model(images, prepared), self.module, self.take_output,
                                   f"layer {self.layer!r} of {self.model.name}"))

    def describe(self) -> str:
        return self.layer if self.layer == self.requested else f"{self.requested} -> {self.layer}"
