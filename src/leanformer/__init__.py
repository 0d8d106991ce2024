"""Lean Transformers: the shared package of the course."""
from .attention import scaled_dot_product_attention
from .checkpoint import load_model, save_model
from .data import CLASSES, load_cifar10
from .convnet import ConvNet, ConvNetConfig, whiten_init_
from .model import Attention, Block, ConvTokenizer, Mlp, PatchEmbed, TextTransformer, ViTConfig, VisionTransformer

__version__ = "0.1.0"
