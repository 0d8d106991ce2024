"""The Transformer of the course, built from timm-named blocks.

PatchEmbed / ConvTokenizer -> + position embedding -> Block x depth -> LayerNorm -> pool -> head

The same ``Block`` serves the Vision Transformer (``VisionTransformer``) and the text
Transformer repaired from the attention article (``TextTransformer``). Blocks may differ in
width (heads and MLP hidden units, see ``ViTConfig.block_widths``), which is what a pruned model
needs; every weight matrix stays an ``nn.Linear``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from .attention import scaled_dot_product_attention
from .tokenizers import ConvTokenizer, PatchEmbed, input_window  # noqa: F401 (lessons import them from here)
from .files import tensors_sha256

if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # typeshed's type of "any dataclass"

# CIFAR-10 training-set statistics. They live in the model (see ``VisionTransformer.forward``)
# so that a checkpoint takes images in [0, 1] and nobody has to remember the numbers.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Attention(nn.Module):
    """Multi-head self-attention: one linear layer makes Q, K and V for all heads.

    The attention width ``num_heads * head_dim`` is its own number, not tied to the model width
    ``dim`` (as in timm): a block that has lost two of its four heads keeps ``head_dim`` and
    simply has ``num_heads=2``, with ``qkv`` of shape (3 * 2 * head_dim, dim) and ``proj`` of
    shape (dim, 2 * head_dim).

    By default it runs the course's own ``scaled_dot_product_attention``, which forms the
    attention weights so that they can be read. ``fused=True`` switches to PyTorch's
    ``F.scaled_dot_product_attention``, which computes the same output without keeping the
    weights (lesson 01 times the two side by side). The attention weights pass through ``self.attn_map``, an
    identity module: ``attention_maps`` (below) hooks it to read them, and ``torch.export`` and
    ``torch.compile`` see an ordinary module.
    """

    def __init__(self, dim: int, num_heads: int = 4, head_dim: int | None = None,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        if head_dim is None:
            if num_heads < 1 or dim % num_heads:
                raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}, "
                                 "or give head_dim")
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dim = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias)
        self.attn_map = nn.Identity()
        self.proj = nn.Linear(self.attn_dim, dim)
        self.fused = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        # (B, N, 3 * attn_dim) -> (3, B, heads, N, head_dim)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            x, weights = scaled_dot_product_attention(q, k, v, mask)
            self.attn_map(weights)  # identity; a forward hook here reads the weights
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)  # concatenate the heads
        return self.proj(x)


class Mlp(nn.Module):
    """Position-wise feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, skip a residual branch for a random subset of samples."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class Block(nn.Module):
    """Pre-norm Transformer block: x + Attention(LN(x)), then x + Mlp(LN(x)).

    With weights copied over it computes what ``nn.TransformerEncoderLayer(norm_first=True,
    batch_first=True, activation="gelu")`` computes (checked in tests/test_model.py).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0, drop: float = 0.0,
                 drop_path: float = 0.0, eps: float = 1e-5, head_dim: int | None = None,
                 mlp_hidden: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio) if mlp_hidden is None else mlp_hidden, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), mask))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> Block:
        """A Block holding the weights of a PyTorch ``nn.TransformerEncoderLayer``.

        PyTorch stacks the Q, K and V projections in one ``in_proj_weight``, in the same
        order as our ``qkv`` layer, so each tensor maps over one to one.
        """
        dim = layer.self_attn.embed_dim
        block = cls(dim, layer.self_attn.num_heads, layer.linear1.out_features / dim,
                    eps=layer.norm1.eps)
        pairs: list[tuple[nn.LayerNorm | nn.Linear, nn.LayerNorm | nn.Linear]] = [
            (block.norm1, layer.norm1), (block.norm2, layer.norm2),
            (block.attn.proj, layer.self_attn.out_proj),
            (block.mlp.fc1, layer.linear1), (block.mlp.fc2, layer.linear2),
        ]
        with torch.no_grad():
            for target, source in pairs:
                target.weight.copy_(source.weight)
                target.bias.copy_(source.bias)
            block.attn.qkv.weight.copy_(layer.self_attn.in_proj_weight)
            block.attn.qkv.bias.copy_(layer.self_attn.in_proj_bias)
        return block


def config_fields(cls: type[DataclassInstance], d: Mapping[str, Any],
                  tuples: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of a config dict (from JSON) for dataclass ``cls``: unknown names refused with
    the known ones listed, and the fields named in ``tuples`` turned back from lists to tuples."""
    d = dict(d)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; this leanformer knows {sorted(known)}")
    for key in tuples:
        if key in d:
            d[key] = tuple(d[key])
    return d


@dataclass
class ViTConfig:
    """Everything needed to rebuild a ``VisionTransformer``; saved inside each checkpoint."""

    img_size: int = 32
    in_chans: int = 3
    num_classes: int = 10
    tokenizer: str = "patch"  # "patch" (ViT) or "conv" (CCT-style ConvTokenizer)
    patch_size: int = 4  # used by the patch tokenizer
    conv_channels: tuple[int, ...] = (64, 128)  # used by the conv tokenizer; the last one is embed_dim
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    pool: str = "attn"  # "cls" (class token), "mean", or "attn" (learned attention pooling)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    # Blocks of different widths (a pruned model): one (heads, MLP hidden units) pair per block.
    # Empty means every block has num_heads heads and int(embed_dim * mlp_ratio) hidden units.
    block_widths: tuple[tuple[int, int], ...] = ()
    head_dim: int = 0  # width of one head; 0 means embed_dim // num_heads

    @property
    def head_width(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    def widths(self) -> list[tuple[int, ...]]:
        """[(heads, MLP hidden units)] of every block, whether or not they differ."""
        if self.block_widths:
            return [tuple(w) for w in self.block_widths]
        return [(self.num_heads, int(self.embed_dim * self.mlp_ratio))] * self.depth

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViTConfig:
        d = config_fields(cls, d, tuples=("conv_channels", "mean", "std"))
        if "block_widths" in d:
            d["block_widths"] = tuple(tuple(int(v) for v in w) for w in d["block_widths"])
        return cls(**d)


class WeightsDigest(nn.Module):
    """``model.weights_sha256``: the digest of the weights the model holds now, computed when
    asked, so that a pruned, fine-tuned or copied model never carries its original's digest.
    ``model.provenance`` is the record of how it was made (``load_model`` and ``fit`` set it)."""

    provenance: dict[str, Any]

    @property
    def weights_sha256(self) -> str:
        return tensors_sha256(self.state_dict())


class VisionTransformer(WeightsDigest, nn.Module):
    """A Vision Transformer for small images. Input: float images in [0, 1], (B, 3, H, W).
    Output: logits (B, num_classes)."""

    mean: torch.Tensor  # buffers (registered in __init__)
    std: torch.Tensor

    def __init__(self, cfg: ViTConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = cfg or ViTConfig()
        if overrides:
            cfg = ViTConfig(**{**cfg.to_dict(), **overrides})
        self.cfg = cfg
        D = cfg.embed_dim
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, -1, 1, 1), persistent=False)

        self.patch_embed: PatchEmbed | ConvTokenizer
        if cfg.tokenizer == "patch":
            self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, D)
        elif cfg.tokenizer == "conv":
            if cfg.conv_channels[-1] != D:
                raise ValueError(f"conv_channels[-1] ({cfg.conv_channels[-1]}) must equal embed_dim ({D})")
            self.patch_embed = ConvTokenizer(cfg.img_size, cfg.in_chans, cfg.conv_channels)
        else:
            raise ValueError(f"tokenizer must be 'patch' or 'conv', got {cfg.tokenizer!r}")
        if cfg.pool not in ("cls", "mean", "attn"):
            raise ValueError(f"pool must be 'cls', 'mean' or 'attn', got {cfg.pool!r}")
        if not cfg.head_dim and D % cfg.num_heads:
            raise ValueError(f"embed_dim {D} must be divisible by num_heads {cfg.num_heads}, "
                             "or set head_dim")
        widths = cfg.widths()
        if len(widths) != cfg.depth or any(len(w) != 2 or min(w) < 0 for w in widths):
            raise ValueError(f"block_widths must hold depth={cfg.depth} pairs of (heads, MLP "
                             f"hidden units), each >= 0; got {cfg.block_widths!r}")

        num_tokens = self.patch_embed.num_patches + (cfg.pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, D) * 0.02)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        # Stochastic depth grows linearly with depth: early blocks are almost always kept.
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(D, heads, drop=cfg.drop_rate, drop_path=r, head_dim=cfg.head_width,
                  mlp_hidden=hidden) for r, (heads, hidden) in zip(rates, widths)
        )
        self.norm = nn.LayerNorm(D)
        self.attn_pool = nn.Linear(D, 1) if cfg.pool == "attn" else None
        self.head = nn.Linear(D, cfg.num_classes)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.pool == "cls":
            return x[:, 0]
        if self.attn_pool is None:  # pool == "mean"
            return x.mean(dim=1)
        # Attention pooling: a learned score per token, softmax over tokens, weighted sum.
        w = torch.softmax(self.attn_pool(x), dim=1)  # (B, N, 1)
        return (w * x).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.forward_features(x)))

    @torch.no_grad()
    def pool_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention-pooling weights (B, N): how much each token contributes to the prediction.
        With the conv tokenizer, token i covers one cell of an 8x8 grid over the image."""
        if self.attn_pool is None:  # pool != "attn"
            raise ValueError("pool_weights needs a model with pool='attn'")
        return torch.softmax(self.attn_pool(self.forward_features(x)), dim=1).squeeze(-1)


class TextTransformer(nn.Module):
    """The attention article's text Transformer, repaired: token embedding + position embedding,
    N pre-norm blocks, and a linear head to the vocabulary at every position."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, depth: int = 2, num_heads: int = 4,
                 max_len: int = 64, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.tok_embed = nn.Embedding(vocab_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, vocab_size)
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, L) int -> (B, L, vocab_size)
        x = self.tok_embed(tokens)
        x = x + self.pos_embed[:, : tokens.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


def _init_weights(m: nn.Module) -> None:
    # Truncated-normal linear weights and zero biases, the usual ViT initialisation.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@contextlib.contextmanager
def attention_maps(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the attention weights of every ``Attention`` in ``model`` while inside the block.

        with attention_maps(model) as maps:
            model(x)
        maps["blocks.0.attn"]  # (batch, heads, queries, keys)

    ``model`` may also be a bare ``Attention``; its weights are then stored under ``"attn"``,
    the name it has inside a ``Block``. Forward hooks on each ``attn_map`` identity do the reading, so the model itself has no
    flag to set and stays what ``torch.export`` and ``torch.compile`` accept. Fused attention
    never forms the weights; turn ``fused`` off to see them.
    """
    maps: dict[str, torch.Tensor] = {}
    handles: list[RemovableHandle] = []
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            def keep(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor,
                     name: str = name or "attn") -> None:
                maps[name] = out.detach()
            handles.append(module.attn_map.register_forward_hook(keep))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
