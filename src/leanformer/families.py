"""The model families of the course, by name, and the one way to build a model of either.

A checkpoint and a recipe name their model's family ("vit" or "convnet") and hold its config as a
dict; ``create_model`` turns the two back into a model, as timm's ``create_model`` does for its
registry, and ``arch_of`` gives the name of a model's family. A new family is one entry in
``ARCHS``.
"""
from typing import Any, TypeAlias, cast

from torch import nn

from .convnet import ConvNet, ConvNetConfig
from .model import ViTConfig, VisionTransformer

# The config of any family's model, and any family's model.
ModelConfig: TypeAlias = ViTConfig | ConvNetConfig
Model: TypeAlias = VisionTransformer | ConvNet

# arch name -> (config class, model class). Each model class takes the config class of its own
# entry, a pairing that ``create_model`` checks when it runs.
ARCHS: dict[str, tuple[type[ModelConfig], type[nn.Module]]] = {
    "vit": (ViTConfig, VisionTransformer), "convnet": (ConvNetConfig, ConvNet)}


def create_model(arch: str, cfg: dict[str, Any] | ModelConfig) -> Model:
    """A freshly initialised model of family ``arch`` from its config, or from a dict of config
    fields (``from_dict``: a field the config does not have is refused). Seed torch first for
    reproducible weights."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; leanformer knows {', '.join(ARCHS)}")
    config_cls, model_cls = ARCHS[arch]
    if isinstance(cfg, dict):
        cfg = config_cls.from_dict(cfg)
    elif not isinstance(cfg, config_cls):
        raise TypeError(f"arch {arch!r} takes a {config_cls.__name__} or a dict, "
                        f"not a {type(cfg).__name__}")
    return cast(Model, model_cls(cfg))  # ARCHS pairs each config class with its model class


def arch_of(model: nn.Module) -> str | None:
    """The name in ``ARCHS`` of ``model``'s family ("vit", "convnet"), or None for another model."""
    for name, (_, cls) in ARCHS.items():
        if isinstance(model, cls):
            return name
    return None
