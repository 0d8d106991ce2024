"""The course's training runs, by name: each ``Recipe`` says everything ``train.fit`` needs to
repeat a run (model, optimizer, schedule, augmentation, precision, seed).

A recipe is data. A variant names the recipe it starts from and only what it changes, so that
``RECIPES`` reads as the list of the course's runs and how they differ.
"""
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from .precision import PRECISIONS, Precision


@dataclass
class Recipe:
    """A named, complete description of a training run."""

    name: str
    arch: str = "vit"  # "vit" (VisionTransformer) or "convnet" (ConvNet): a name in families.ARCHS
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the arch's config (ViTConfig, ConvNetConfig)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05  # AdamW's is decoupled; SGD's is added to the gradient (L2)
    optimizer: str = "adamw"  # "adamw" or "sgd"
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    batchnorm_lr_scale: float = 1.0  # learning rate of BatchNorm parameters / the schedule's
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0
    auto_augment: str = ""  # "" (off) or an AutoAugment policy: "cifar10", "imagenet", "svhn"
    lookahead: float = 0.0  # final weight of airbench's Lookahead average (0: off), see train.Lookahead
    mix_prob: float = 0.0  # share of batches mixed by mixup or CutMix (0: off)
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    precision: Precision = "auto"  # "auto", "fp32", "bf16" or "fp16" (see .precision)
    seed: int = 0

    def __post_init__(self) -> None:
        # A string in a recipe's JSON: checked here, made a dtype by autocast_dtype.
        if self.precision not in PRECISIONS:
            raise RecipeError(f"recipe {self.name!r}: precision must be one of "
                              f"{', '.join(PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def defaults() -> dict[str, Any]:
        """The default of every field that has one: what a record from before a field existed
        means by leaving it out."""
        return {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}


class RecipeError(ValueError):
    """A recipe name that does not exist, or fields it does not have."""


RECIPES: dict[str, Recipe] = {}


def _add(name: str, like: str | None = None, **changes: Any) -> None:
    """Register recipe ``name``: recipe ``like`` with ``changes``, or a new one from the defaults."""
    RECIPES[name] = replace(RECIPES[like], name=name, **changes) if like else Recipe(name=name, **changes)


_REFERENCE_VIT = dict(tokenizer="conv", conv_channels=(32, 128), embed_dim=128, depth=4, num_heads=4,
                      mlp_ratio=2.0, pool="attn", drop_path_rate=0.1)

# Lesson 03's reference: a CCT-style ViT (conv tokenizer, 64 tokens of width 128), trained with
# AutoAugment and mixup/CutMix. Every compression lesson starts from it.
_add("reference", model=_REFERENCE_VIT, epochs=120, batch_size=128, lr=1.5e-3, weight_decay=0.05,
     warmup_epochs=5, label_smoothing=0.1, crop_padding=4, flip=True, cutout=0,
     auto_augment="cifar10", mix_prob=0.5, mixup_alpha=0.8, cutmix_alpha=1.0, precision="bf16")
# A plain patch-4 ViT of the same width and depth, for comparison.
_add("vit-patch4", model=dict(tokenizer="patch", patch_size=4, embed_dim=128, depth=4, num_heads=4,
                              mlp_ratio=2.0, pool="cls", drop_path_rate=0.1),
     epochs=30, precision="bf16")
# Seconds, not minutes: what quick mode and the tests train.
_add("quick", model=dict(tokenizer="conv", conv_channels=(32, 64), embed_dim=64, depth=2, num_heads=2,
                         mlp_ratio=2.0, pool="attn", drop_path_rate=0.0),
     epochs=3, batch_size=128, lr=3e-3, warmup_epochs=0.5, cutout=0, precision="auto")

# Lesson 03's ablations: earlier reference recipes, kept with their checkpoints (they also differ
# in epochs, warm-up and the tokenizer's first convolution).
_add("reference-no-autoaugment", like="reference", epochs=90, warmup_epochs=3, auto_augment="",
     model={**_REFERENCE_VIT, "conv_channels": (64, 128)})
_add("reference-no-mix", like="reference-no-autoaugment", epochs=65, mix_prob=0.0)

# Lesson 07's parity runs: the same seed, crops and flips; only the precision differs.
_add("parity-fp32", like="reference", epochs=8, warmup_epochs=1, auto_augment="", mix_prob=0.0,
     precision="fp32")
_add("parity-bf16", like="parity-fp32", precision="bf16")

# Fine-tunes of a trained model (pass it to fit): short and gentle, so the weights move without
# forgetting. "finetune-brief" is lesson 04's one-pass repair of many pruned models (fp32: a pass
# this short is not worth a precision question); "qat" is lesson 05's quantization-aware training.
_add("finetune", like="reference", epochs=18, lr=5e-4, warmup_epochs=1)
_add("finetune-brief", like="finetune", epochs=1, lr=2e-4, warmup_epochs=0.1, auto_augment="",
     mix_prob=0.0, precision="fp32")
_add("qat", like="finetune-brief", epochs=4, lr=2e-4, warmup_epochs=0.2, precision="bf16")

# Lesson 06's teacher: the airbench94-style ConvNet with airbench94's hyperparameters restated for
# a loss averaged over a batch of 512: its rate of 11.5 and weight decay of 0.0153 per 1,024
# examples at Nesterov momentum 0.85 become lr = 11.5 * 512 / (1024 * (1 + 1 / (1 - 0.85))) = 0.75
# and weight_decay = 0.0153 / 11.5; BatchNorm learns 64 times faster; Lookahead 0.95^5.
_add("teacher-cnn", arch="convnet", model=dict(widths=(64, 256, 256)), epochs=20, batch_size=512,
     optimizer="sgd", lr=0.75, momentum=0.85, nesterov=True, weight_decay=0.0153 / 11.5,
     batchnorm_lr_scale=64.0, warmup_epochs=3, lookahead=0.95 ** 5, label_smoothing=0.2,
     crop_padding=2, flip=True, precision="auto")
# The teacher's first run, a step in lesson 06's table (checkpoints/distill/teacher-cnn-8ep.json).
_add("teacher-cnn-8ep", like="teacher-cnn", epochs=8, warmup_epochs=1.2, lookahead=0.0)
# Lesson 06's student: the reference at half its width, 28% of its FLOPs per image.
_add("student", like="reference", epochs=20, warmup_epochs=2,
     model={**_REFERENCE_VIT, "conv_channels": (16, 64), "embed_dim": 64, "num_heads": 2})
# The student for the sweep of temperatures and weights on the shipped 5,000-image subset.
_add("student-sweep", like="student", epochs=15, warmup_epochs=1)
# The teacher in miniature for quick mode and the tests: narrow, two epochs at batch 128 with the
# teacher's rate (a quarter of its batch: large steps, for there are few).
_add("teacher-cnn-quick", like="teacher-cnn", model=dict(widths=(16, 32, 32)), epochs=2,
     batch_size=128, warmup_epochs=0.5)


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """A copy of recipe ``name`` with ``overrides`` of its fields (``get_recipe("quick",
    epochs=1)``). An unknown name or field raises ``RecipeError`` naming the known ones."""
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    known = RECIPES[name].to_dict()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise RecipeError(f"recipe fields {unknown} do not exist; a Recipe has {', '.join(known)}")
    return Recipe(**{**known, **overrides})
