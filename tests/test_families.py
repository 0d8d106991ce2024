import pytest
import torch

from leanformer.convnet import ConvNet, ConvNetConfig
from leanformer.families import ARCHS, arch_of, create_model
from leanformer.model import ViTConfig, VisionTransformer


def test_a_config_and_its_dict_build_the_same_model():
    cfg = ViTConfig(tokenizer="conv", conv_channels=(16, 32), embed_dim=32, depth=1, num_heads=2)
    torch.manual_seed(0)
    a = create_model("vit", cfg)
    torch.manual_seed(0)
    b = create_model("vit", cfg.to_dict())
    assert isinstance(a, VisionTransformer) and a.cfg == b.cfg
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_every_family_knows_its_name():
    assert set(ARCHS) == {"vit", "convnet"}
    assert arch_of(create_model("convnet", {"widths": (8, 16, 16)})) == "convnet"
    assert arch_of(create_model("vit", {"embed_dim": 32, "num_heads": 2, "depth": 1})) == "vit"
    assert arch_of(torch.nn.Linear(2, 2)) is None


def test_mistakes_are_named():
    with pytest.raises(ValueError, match="unknown arch 'resnet'; leanformer knows vit, convnet"):
        create_model("resnet", {})
    with pytest.raises(TypeError, match="takes a ConvNetConfig or a dict, not a ViTConfig"):
        create_model("convnet", ViTConfig())
    with pytest.raises(ValueError, match="unknown ConvNetConfig fields"):
        create_model("convnet", {"embed_dim": 64})
    assert isinstance(create_model("convnet", ConvNetConfig(widths=(8, 16, 16))), ConvNet)
