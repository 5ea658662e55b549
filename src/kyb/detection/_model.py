"""The detector network: a Faster R-CNN assembled from torchvision parts, and its builder.

Order follows torchvision/models/detection/faster_rcnn.py: defaults, the parts, then the builder.
Nothing is ever downloaded: every torchvision builder is called with ``weights=None``; trained weights
and backbone weights come from local files checked by sha256 (:mod:`kyb.detection._weights`).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields
from typing import Any

from kyb.detection._weights import DetectorWeights, WeightsError, WeightsFile

__all__ = ["CATEGORIES", "DetectorArch", "build_detector"]

#: Class 0 is the background, as in torchvision; the rest match kyb.v1.Kind (1 logo, 2 album_cover).
CATEGORIES: tuple[str, ...] = ("__background__", "logo", "album_cover")


@dataclass(frozen=True)
class DetectorArch:
    """The knobs that shape the network; stored in the weights file so a model is rebuilt as trained.

    Defaults are chosen for training from scratch on a 2-core CPU (measured in docs/detector.md):
    MobileNetV3-Large features (the lightest torchvision detection backbone) at a 320-px shorter side,
    a 64-channel FPN and a 256-wide box head — torchvision's 256/1024 spend most of a CPU step in the
    RoI head (12.8 M of its 19 M parameters) without helping two coarse classes. Anchors start at 16 px
    because a logo on a shirt is often a few percent of the photo.
    """

    #: ``mobilenet_v3_large`` or ``mobilenet_v3_small`` (torchvision.models), or ``resnet18``.
    backbone: str = "mobilenet_v3_large"
    #: Images are resized so their shorter side is this (longer side capped at 4/3 of it), in pixels.
    min_size: int = 320
    max_size: int = 427
    fpn_channels: int = 64
    box_head_width: int = 256
    #: RoIs sampled per image for the box loss; torchvision's 512 is tuned for 80 classes.
    box_batch_size_per_image: int = 128
    #: Anchor sizes per FPN level, finest first (each level the same count); empty = per backbone:
    #: MobileNet levels are strides 16/32/64, ResNet-18's 8/16/32/64.
    anchor_sizes: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.backbone not in _BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(_BACKBONES)}, not {self.backbone!r}")
        if not 64 <= self.min_size <= self.max_size <= 2048:
            raise ValueError("min_size and max_size must satisfy 64 <= min_size <= max_size <= 2048")
        for name in ("fpn_channels", "box_head_width", "box_batch_size_per_image"):
            if not 8 <= getattr(self, name) <= 4096:
                raise ValueError(f"{name} must be in 8..4096")
        if any(a <= 0 for level in self.anchor_sizes for a in level) or len({len(x) for x in self.anchor_sizes}) > 1:
            raise ValueError("anchor_sizes must be positive, the same count on every level")

    def anchors(self) -> tuple[tuple[int, ...], ...]:
        """Anchor sizes per level (the defaults when ``anchor_sizes`` is empty)."""
        if self.anchor_sizes:
            return self.anchor_sizes
        if self.backbone == "resnet18":
            return ((16, 24), (32, 48), (64, 128), (256, 512))
        return ((16, 32), (64, 128), (256, 512))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["anchor_sizes"] = [list(x) for x in self.anchor_sizes]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorArch:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown detector arch fields: {sorted(unknown)}")
        values = dict(data)
        if "anchor_sizes" in values:
            values["anchor_sizes"] = tuple(tuple(int(a) for a in x) for x in values["anchor_sizes"])
        return cls(**values)


_BACKBONES = ("mobilenet_v3_large", "mobilenet_v3_small", "resnet18")


def _mobilenet_body(name: str, backbone_weights: WeightsFile | None) -> tuple[Any, dict[str, str], list[int]]:
    """MobileNetV3 ``features`` and the two stages the FPN reads (strides 16 and 32, as torchvision's
    mobilenet FPN does), after loading a local ImageNet state dict when one is given."""
    import torch
    from torch import nn
    from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

    # torchvision's MobileNetV3 BatchNorm momentum (0.01) suits ImageNet's long runs; from scratch on a
    # short run the running statistics would lag the weights and eval-mode outputs collapse.
    norm = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)
    net = (mobilenet_v3_large if name == "mobilenet_v3_large" else mobilenet_v3_small)(weights=None, norm_layer=norm)
    if backbone_weights is not None:
        state = torch.load(backbone_weights.verified_path(), map_location="cpu", weights_only=True)
        missing, _ = net.load_state_dict(state, strict=False)
        if any(k.startswith("features.") for k in missing):
            raise WeightsError(f"{backbone_weights.path}: not a torchvision {name} state dict")
    features = net.features
    # Stage ends are the blocks whose stride is > 1 ("_is_cn" in torchvision); the FPN takes the
    # input of the last two downsampling blocks plus the final conv.
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    picks = stage_indices[-2:]
    return_layers = {str(idx): str(k) for k, idx in enumerate(picks)}
    channels = [features[i].out_channels for i in picks]
    return features, return_layers, channels


def _resnet_body(backbone_weights: WeightsFile | None) -> tuple[Any, dict[str, str], list[int]]:
    import torch
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if backbone_weights is not None:
        state = torch.load(backbone_weights.verified_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    return net, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512]


def build_detector(
    *,
    weights: DetectorWeights | None = None,
    num_classes: int | None = None,
    backbone_weights: WeightsFile | None = None,
    arch: DetectorArch | None = None,
    **kwargs: Any,
) -> Any:
    """A ``torchvision.models.detection.FasterRCNN`` for logos and album covers.

    ``weights``: trained detector weights (verified by sha256 before loading); they fix ``num_classes``
    and ``arch``, and a conflicting ``num_classes`` is a ``ValueError``. ``backbone_weights``: a local
    torchvision ImageNet state dict for the backbone (ignored when ``weights`` is given, as torchvision
    does); without either the network starts from random initialisation. ``kwargs`` go to ``FasterRCNN``
    (score/NMS thresholds, detections per image...).

    The model takes a list of float tensors ``(3, H, W)`` in 0..1, RGB. In train mode it also takes
    targets ``[{"boxes": (N, 4) float x1y1x2y2 pixels, "labels": (N,) int64}]`` and returns a dict of
    losses; in eval mode it returns ``[{"boxes", "labels", "scores"}]`` in input pixels.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if weights is not None:
        if num_classes is not None and num_classes != len(weights.categories):
            raise ValueError(f"num_classes={num_classes} but the weights have {len(weights.categories)} categories")
        num_classes = len(weights.categories)
        if arch is not None and arch != weights.arch:
            raise ValueError("arch differs from the one the weights were trained with")
        arch = weights.arch
        backbone_weights = None
    num_classes = len(CATEGORIES) if num_classes is None else num_classes
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + one class), not {num_classes}")
    arch = arch or DetectorArch()
    # FPN levels: ResNet-18 layers 2-4, MobileNet's last two stages, plus the max-pooled level.
    n_levels = 4 if arch.backbone == "resnet18" else 3
    sizes = arch.anchors()
    if len(sizes) != n_levels:
        raise ValueError(f"anchor_sizes needs {n_levels} levels for {arch.backbone}, not {len(sizes)}")
    if arch.backbone == "resnet18":
        body, return_layers, in_channels = _resnet_body(backbone_weights)
    else:
        body, return_layers, in_channels = _mobilenet_body(arch.backbone, backbone_weights)
    backbone = BackboneWithFPN(body, return_layers, in_channels, arch.fpn_channels, extra_blocks=LastLevelMaxPool())
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * n_levels)
    resolution = 7
    box_head = TwoMLPHead(arch.fpn_channels * resolution**2, arch.box_head_width)
    defaults: dict[str, Any] = {
        "min_size": arch.min_size,
        "max_size": arch.max_size,
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 150,
        "box_batch_size_per_image": arch.box_batch_size_per_image,
        "box_score_thresh": 0.05,
        "box_detections_per_img": 50,
    }
    defaults.update(kwargs)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(arch.box_head_width, num_classes),
        **defaults,
    )
    if weights is not None:
        model.load_state_dict(weights.state_dict())
    return model
