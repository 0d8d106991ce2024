"""Pruning: zero single weights (unstructured), or remove whole attention heads and MLP hidden
units (structured), so that the weight matrices shrink and the model really does less work.

One module per job, from the bottom up:

    structured    slicing heads and MLP units out of the weights: prune_linear,
                  prune_heads_, prune_mlp_, prune_model, keep_top; drop_blocks,
                  prune_tokenizer_channels
    scores        importance scores (taylor, the batch variant; taylor-per-example;
                  magnitude, random), prune_by_score, and what dropping a head or a
                  whole block costs (drop_one_head_losses, drop_one_block_losses,
                  drop_blocks_by_loss); the tokenizer's channels (tokenizer_channel_scores,
                  prune_tokenizer_by_score)
    ranking       a score's ranking of the heads against the exact one or another's:
                  rank_correlation, correlation_gap (bootstrap over heads),
                  kept_in_common
    crosscheck    the same pruning by the Torch-Pruning library, and which heads and units it kept
    magnitude     unstructured magnitude pruning through torch.nn.utils.prune, and its masks
    sparse_files  a pruned model's weights stored dense, gzipped or in CSR, and their bytes
    sweep         sparsity_sweep: prune to each sparsity, fine-tune through the masks,
                  measure; half_accuracies and highest_within, to choose a sparsity on
                  one half of the test images

How a technique is called, here as in ``quantize``, ``distill`` and ``precision``:

* data: a function that trains or sweeps takes a ``CIFAR10`` (``sparsity_sweep``); one
  that reads a batch of images takes ``images`` (uint8, or float in [0, 1]) and, where
  it needs them, ``labels``, as tensors (``importance``, ``prune_by_score``,
  ``drop_one_head_losses``; ``CIFAR10.train_sample`` draws such a batch);
* models: a name ending in ``_`` changes the model or module it is given in place and
  returns that same object (``prune_heads_``, ``prune_mlp_``, ``remove_masks_``), as
  PyTorch's in-place methods and torchao's ``quantize_`` do; every other function leaves
  its arguments as they were and returns a new model (``prune_model``,
  ``prune_by_score``, ``magnitude_prune``).

Every public name is imported here: ``from leanformer.prune import prune_by_score``.
"""
from ..measure.size import tensors_bytes
from .structured import (drop_blocks, head_columns, head_rows, keep_top, prune_heads_,
                         prune_linear, prune_mlp_, prune_model, prune_tokenizer_channels)
from .scores import (GRADIENT_SCORES, SCORES, drop_blocks_by_loss, drop_one_block_losses,
                     drop_one_head_losses, importance, prune_by_score, prune_tokenizer_by_score,
                     tokenizer_channel_scores)
from .ranking import correlation_gap, kept_in_common, rank_correlation
from .crosscheck import kept_by, prune_with_torch_pruning
from .magnitude import magnitude_prune, prunable_weights, remove_masks_, sparsity_table
from .sparse_files import SPARSE_FORMATS, csr_tensors, from_csr_tensors, gzip_bytes, sparse_file_bytes
from .sweep import half_accuracies, highest_within, sparsity_sweep

__all__ = [
    # structured
    "prune_linear", "head_columns", "head_rows", "prune_heads_", "prune_mlp_",
    "prune_model", "keep_top", "drop_blocks", "prune_tokenizer_channels",
    # scores
    "SCORES", "GRADIENT_SCORES", "importance", "prune_by_score", "drop_one_head_losses",
    "drop_one_block_losses", "drop_blocks_by_loss", "tokenizer_channel_scores",
    "prune_tokenizer_by_score",
    # ranking
    "rank_correlation", "correlation_gap", "kept_in_common",
    # crosscheck
    "prune_with_torch_pruning", "kept_by",
    # magnitude
    "prunable_weights", "magnitude_prune", "remove_masks_", "sparsity_table",
    # sparse_files
    "csr_tensors", "from_csr_tensors", "gzip_bytes", "SPARSE_FORMATS", "sparse_file_bytes",
    # sweep
    "sparsity_sweep", "half_accuracies", "highest_within",
    # from leanformer.measure.size, for lesson 04
    "tensors_bytes",
]
