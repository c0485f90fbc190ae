"""The registry of classifier architectures: small, for 32-64 px faces, and DP-compatible (GroupNorm, never
BatchNorm, so Opacus can compute per-sample gradients). Every model has `features(x)` (the penultimate layer,
used by MDP and the unlearning probes) and `head`; `forward = head(features(x))`.

    model = create("groupnorm_cnn", num_classes=2, image_size=32)

Inputs are float images in [0, 1], shape (N, 3, H, W); models normalize them themselves with the mean and
std in their config, so every caller (training, evaluation, Triton) feeds the same thing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from umbra.classifiers.model_config import ModelConfig


def _groups(channels: int) -> int:
    return min(8, channels)


class _Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _Classifier(nn.Module):
    """What every architecture shares: `features` (with mirror averaging in eval mode when configured), `head`,
    and `forward = head(features(x))`. Subclasses define `_features`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.mirror_average = config.mirror_average

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.mirror_average and not self.training:
            return (self._features(x) + self._features(x.flip(-1))) / 2
        return self._features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class GroupNormCNN(_Classifier):
    """Four conv blocks (conv, GroupNorm, ReLU, max-pool), then global average pooling and a linear head."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        w = config.width
        chans = [3, w, 2 * w, 4 * w, 4 * w]
        blocks: list[nn.Module] = [_Normalize(config.mean, config.std)]
        for i, (cin, cout) in enumerate(zip(chans, chans[1:], strict=False)):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.ReLU()]
            if i < 3:
                blocks.append(nn.MaxPool2d(2))
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(chans[-1], config.num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(_groups(cout), cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(_Classifier):
    """A ResNet-10-like network with GroupNorm: a stem and four stages of one basic block each."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        w = config.width
        self.body = nn.Sequential(
            _Normalize(config.mean, config.std),
            nn.Conv2d(3, w, 3, padding=1, bias=False), nn.GroupNorm(_groups(w), w), nn.ReLU(),
            _BasicBlock(w, w, 1), _BasicBlock(w, 2 * w, 2), _BasicBlock(2 * w, 4 * w, 2), _BasicBlock(4 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, config.num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Scattering(nn.Module):
    """The fixed stem of the ScatterNets: a 2-D scattering transform (kymatio; J=2, L=8: 81 maps per colour at a
    quarter of the side) of the [0, 1] image, channels flattened to (N, 243, H/4, W/4). No parameters; the
    GroupNorm after it does the normalizing."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        from kymatio.torch import Scattering2D

        self.scattering = Scattering2D(J=2, shape=(config.image_size, config.image_size), L=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scattering(x.contiguous()).flatten(1, 2)


SCATTERING_CHANNELS = 3 * 81


class ScatterNet(_Classifier):
    """Tramèr & Boneh, "Differentially private learning needs better features" (ICLR 2021): hand-designed
    scattering features (`stem`, fixed), GroupNorm without learned parameters, then a linear head
    (`scatternet_linear`) or a small CNN (`scatternet_cnn`, two conv blocks with tanh). Nothing is learned in the
    stem, so DP-SGD's noise spreads over far fewer parameters; the training loop computes the stem once per image
    (see `fixed_stem`)."""

    def __init__(self, config: ModelConfig, cnn: bool):
        super().__init__(config)
        if config.image_size != 32:
            raise ValueError(f"image_size {config.image_size}: the ScatterNets take 32 px images")
        side, w, groups = config.image_size // 4, config.width, _groups(config.width)
        self.stem = _Scattering(config)
        layers: list[nn.Module] = [nn.GroupNorm(27, SCATTERING_CHANNELS, affine=False)]
        if cnn:
            layers += [nn.Conv2d(SCATTERING_CHANNELS, w, 3, padding=1), nn.GroupNorm(groups, w), nn.Tanh(),
                       nn.MaxPool2d(2), nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(groups, w), nn.Tanh(),
                       nn.MaxPool2d(2)]
            features = w * (side // 4) ** 2
        else:
            features = SCATTERING_CHANNELS * side * side
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(features, config.num_classes)

    @property
    def fixed_stem(self) -> nn.Module:
        """The parameter-free first stage; `trainable()` maps its output to logits."""
        return self.stem

    def trainable(self) -> nn.Module:
        return nn.Sequential(self.body, self.head)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "groupnorm_cnn": GroupNormCNN,
    "small_resnet": SmallResNet,
    "scatternet_linear": lambda config: ScatterNet(config, cnn=False),
    "scatternet_cnn": lambda config: ScatterNet(config, cnn=True),
}
IMAGE_SIZES = (32, 64)


def create(config: ModelConfig) -> nn.Module:
    """A freshly initialized model; ValueError (naming the choices) for an unknown architecture or size."""
    if config.architecture not in REGISTRY:
        raise ValueError(f"architecture {config.architecture!r} is not one of {', '.join(REGISTRY)}")
    if config.image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size {config.image_size} is not one of {IMAGE_SIZES}")
    if config.num_classes < 2:
        raise ValueError("num_classes must be at least 2")
    try:
        return REGISTRY[config.architecture](config)
    except ValueError as e:
        raise ValueError(f"{config.architecture}: {e}") from None
