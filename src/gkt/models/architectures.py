"""Network builders, registered by source (``zoo``, ``timm``, ...) and name.

Every network exposes ``forward_features(x) -> [B, D]`` (the penultimate, globally pooled feature
*before* the last activation, as KDEP needs it) and ``forward_head(features) -> logits``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gkt.core.registry import Registry

NetBuilder = Callable[..., nn.Module]
ZOO_ARCHITECTURES: Registry[NetBuilder] = Registry("zoo architecture")
register_architecture = ZOO_ARCHITECTURES.register


class HeadedNet(nn.Module):
    """Base for gkt's own networks: ``forward = head(final_activation(forward_features(x)))``.
    Subclasses set ``self.head`` and ``self.final_activation`` in ``__init__``."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_activation(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_architecture("linear")
class LinearNet(HeadedNet):
    """Multinomial logistic regression on the flattened image."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int):
        super().__init__()
        self.final_activation = nn.Identity()
        self.head = nn.Linear(in_chans * img_size * img_size, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register_architecture("mlp")
class MLP(HeadedNet):
    """Fully connected ReLU network; features are the last hidden layer before its ReLU."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int, hidden: tuple[int, ...] = (256,),
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_chans * img_size * img_size
        for i, h in enumerate(hidden):
            if i:
                layers += [nn.ReLU(), nn.Dropout(dropout)]
            layers.append(nn.Linear(width, h))
            width = h
        self.body = nn.Sequential(*layers)
        self.final_activation = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


@register_architecture("cnn")
class SimpleCNN(HeadedNet):
    """Plain conv-BN-ReLU-maxpool stages, global average pooling, linear head."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int, channels: tuple[int, ...] = (32, 64),
                 dropout: float = 0.0):
        super().__init__()
        stages: list[nn.Module] = []
        cin = in_chans
        for i, cout in enumerate(channels):
            stages += [_conv_bn(cin, cout), nn.ReLU(), _conv_bn(cout, cout)]
            if i < len(channels) - 1:
                stages += [nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.body = nn.Sequential(*stages)
        self.final_activation = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.conv2 = _conv_bn(cin, cout, stride), _conv_bn(cout, cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the block output *before* its final ReLU."""
        return self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x)


@register_architecture("resnet")
class SmallResNet(HeadedNet):
    """CIFAR-style ResNet with basic blocks; features are pooled before the last block's ReLU."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int, widths: tuple[int, ...] = (16, 32, 64),
                 blocks: tuple[int, ...] = (1, 1, 1)):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_chans, widths[0]), nn.ReLU())
        layers: list[BasicBlock] = []
        cin = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for b in range(count):
                layers.append(BasicBlock(cin, width, 2 if stage and b == 0 else 1))
                cin = width
        self.blocks = nn.ModuleList(layers)
        self.final_activation = nn.ReLU()
        self.head = nn.Linear(cin, num_classes)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's feature map before its ReLU."""
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.blocks) - 1:
                x = torch.relu(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self._trunk(x)).mean((2, 3)))


class TimmNet(nn.Module):
    """Adapter giving a timm model gkt's ``forward_features`` contract (pooled pre-logits features)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


@register_architecture("vit")
def timm_vit(num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> TimmNet:
    """timm's VisionTransformer sized for small images (set patch_size, embed_dim, depth, num_heads)."""
    from timm.models.vision_transformer import VisionTransformer

    return TimmNet(VisionTransformer(img_size=img_size, in_chans=in_chans, num_classes=num_classes, **kwargs))


@register_architecture("mixer")
def timm_mixer(num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> TimmNet:
    """timm's MlpMixer sized for small images (set patch_size, num_blocks, embed_dim)."""
    from timm.models.mlp_mixer import MlpMixer

    return TimmNet(MlpMixer(img_size=img_size, in_chans=in_chans, num_classes=num_classes, **kwargs))


@register_architecture("convmixer")
def timm_convmixer(num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> TimmNet:
    """timm's ConvMixer (set dim, depth, kernel_size, patch_size); ``img_size`` is not needed."""
    from timm.models.convmixer import ConvMixer

    return TimmNet(ConvMixer(in_chans=in_chans, num_classes=num_classes, **kwargs))


def build_zoo_net(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs: Any) -> nn.Module:
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return ZOO_ARCHITECTURES[name](num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
