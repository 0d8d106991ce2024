"""Pruning: zero single weights (unstructured), or remove whole attention heads and MLP hidden
units (structured), so that the weight matrices shrink and the model really does less work.

Unstructured pruning goes through ``torch.nn.utils.prune``: ``magnitude_prune`` attaches a mask to
every ``nn.Linear`` and ``nn.Conv2d`` weight, ``remove_masks`` makes the zeros permanent, and
``csr_tensors`` stores what is left in a sparse (CSR) format, to see when that is smaller.

Where a head and a hidden unit live in the weights of a ``Block``:

* head ``h`` of ``Attention`` (``head_dim`` = d): rows ``p * attn_dim + h * d ... + d`` of ``qkv``
  for each of q, k and v (p = 0, 1, 2), and columns ``h * d ... + d`` of ``proj``;
* hidden unit ``u`` of ``Mlp``: row ``u`` of ``fc1`` (and its bias) and column ``u`` of ``fc2``.

``prune_linear`` keeps the chosen rows or columns of one ``nn.Linear``; ``prune_block`` applies it
to a block; ``prune_model`` returns a smaller copy of a ``VisionTransformer`` whose config records
the new widths, so that ``save_model`` and ``load_model`` round-trip it.

Which heads and units to remove is decided by an importance score, one number per head or unit:
``taylor`` (first-order Taylor estimate of the loss change if it were removed, Molchanov et al.
2017; for heads this is the head-gate sensitivity of Michel et al. 2019), ``magnitude`` (the norm of
its weights) or ``random`` (the baseline any score must beat).
"""
import copy
import gzip
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from .measure.size import safetensors_blob, tensors_bytes  # noqa: F401 (tensors_bytes is re-exported)
from .model import Attention, Mlp, VisionTransformer

SCORES = ("taylor", "magnitude", "random")


def prune_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new ``nn.Linear`` that keeps the output rows (``dim=0``) or input columns (``dim=1``) of
    ``layer`` listed in ``index``. The bias belongs to the rows, so it is sliced only with them."""
    index = torch.as_tensor(index, dtype=torch.long, device=layer.weight.device)
    weight = layer.weight.detach().index_select(dim, index).clone()
    has_bias = layer.bias is not None
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=has_bias, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if has_bias:
            new.bias.copy_(layer.bias.detach()[index] if dim == 0 else layer.bias.detach())
    return new


def head_columns(attn: Attention, heads) -> torch.Tensor:
    """The columns of ``attn.proj`` (and the positions within q, k or v) that belong to ``heads``."""
    d = attn.head_dim
    return (torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads]) if len(heads)
            else torch.zeros(0, dtype=torch.long))


def head_rows(attn: Attention, heads) -> torch.Tensor:
    """The rows of ``attn.qkv`` that belong to ``heads``: their q rows, then k rows, then v rows."""
    cols = head_columns(attn, heads)
    return torch.cat([p * attn.attn_dim + cols for p in range(3)])


def prune_heads(attn: Attention, keep) -> None:
    """Keep only the heads listed in ``keep`` (in place): slice ``qkv`` rows and ``proj`` columns."""
    keep = sorted(int(h) for h in keep)
    if any(h < 0 or h >= attn.num_heads for h in keep):
        raise ValueError(f"heads to keep must be in 0..{attn.num_heads - 1}, got {keep}")
    if not keep:
        raise ValueError(f"a block must keep at least one of its {attn.num_heads} heads; "
                         "to remove attention from a block, build a model whose config says so")
    attn.qkv = prune_linear(attn.qkv, head_rows(attn, keep), dim=0)
    attn.proj = prune_linear(attn.proj, head_columns(attn, keep), dim=1)
    attn.num_heads, attn.attn_dim = len(keep), len(keep) * attn.head_dim


def prune_mlp(mlp: Mlp, keep) -> None:
    """Keep only the hidden units listed in ``keep`` (in place): ``fc1`` rows, ``fc2`` columns."""
    keep = torch.as_tensor(sorted(int(u) for u in keep), dtype=torch.long)
    if not len(keep):
        raise ValueError(f"an MLP must keep at least one of its {mlp.fc1.out_features} hidden units")
    if keep.min() < 0 or keep.max() >= mlp.fc1.out_features:
        raise ValueError(f"units to keep must be in 0..{mlp.fc1.out_features - 1}, "
                         f"got {keep.min().item()}..{keep.max().item()}")
    mlp.fc1 = prune_linear(mlp.fc1, keep, dim=0)
    mlp.fc2 = prune_linear(mlp.fc2, keep, dim=1)


def prune_model(model: VisionTransformer, keep_heads, keep_units) -> VisionTransformer:
    """A pruned copy of ``model``: block ``i`` keeps heads ``keep_heads[i]`` and MLP units
    ``keep_units[i]``. The copy's config records the new widths (``ViTConfig.block_widths``)."""
    if len(keep_heads) != len(model.blocks) or len(keep_units) != len(model.blocks):
        raise ValueError(f"give one list of heads and one of units per block ({len(model.blocks)} blocks)")
    pruned = copy.deepcopy(model)
    for block, heads, units in zip(pruned.blocks, keep_heads, keep_units):
        prune_heads(block.attn, heads)
        prune_mlp(block.mlp, units)
    widths = tuple((b.attn.num_heads, b.mlp.fc1.out_features) for b in pruned.blocks)
    pruned.cfg = type(model.cfg)(**{**model.cfg.to_dict(), "block_widths": widths,
                                    "head_dim": model.cfg.head_width})
    pruned.provenance = {}
    return pruned


# --- importance scores -------------------------------------------------------------------------

def _taylor_scores(model, images, labels, batch_size):
    """|dL/dg| for a gate g on every head output and every MLP hidden unit, summed over batches:
    the first-order estimate of how much the loss changes when that head or unit is removed."""
    model.eval()
    heads = [torch.zeros(b.attn.num_heads) for b in model.blocks]
    units = [torch.zeros(b.mlp.fc1.out_features) for b in model.blocks]
    handles = []

    def watch(store, group):
        def hook(module, args):
            x = args[0]
            if x.requires_grad:
                def on_grad(g, x=x):
                    # The gate's gradient: sum of activation times gradient over one group.
                    contrib = (x.detach() * g).flatten(0, -2).sum(0)
                    store.add_(contrib.view(-1, group).sum(1).abs().float().cpu())
                x.register_hook(on_grad)
        return hook

    for i, b in enumerate(model.blocks):
        handles.append(b.attn.proj.register_forward_pre_hook(watch(heads[i], b.attn.head_dim)))
        handles.append(b.mlp.fc2.register_forward_pre_hook(watch(units[i], 1)))
    try:
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size]
            x = x.float().div(255) if x.dtype == torch.uint8 else x
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), labels[start:start + batch_size]).backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return heads, units


def _magnitude_scores(model):
    heads, units = [], []
    for b in model.blocks:
        a, d = b.attn, b.attn.head_dim
        qkv = a.qkv.weight.detach().view(3, a.num_heads, d, -1)
        proj = a.proj.weight.detach().view(-1, a.num_heads, d)
        heads.append((qkv.pow(2).sum((0, 2, 3)) + proj.pow(2).sum((0, 2))).sqrt())
        units.append((b.mlp.fc1.weight.detach().pow(2).sum(1) + b.mlp.fc2.weight.detach().pow(2).sum(0)).sqrt())
    return heads, units


def importance(model: VisionTransformer, score: str = "taylor", images=None, labels=None,
               batch_size: int = 128, seed: int = 0):
    """(head scores, unit scores): one tensor per block each, larger = more important.
    ``taylor`` needs training ``images`` (uint8 or float in [0, 1]) and ``labels``."""
    if score == "taylor":
        if images is None or labels is None:
            raise ValueError("the taylor score needs images and labels (a slice of the training set)")
        return _taylor_scores(model, images, labels, batch_size)
    if score == "magnitude":
        return _magnitude_scores(model)
    if score == "random":
        g = torch.Generator().manual_seed(seed)
        return ([torch.rand(b.attn.num_heads, generator=g) for b in model.blocks],
                [torch.rand(b.mlp.fc1.out_features, generator=g) for b in model.blocks])
    raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")


def prune_by_score(model: VisionTransformer, heads: int, units: int, score: str = "taylor", data=None,
                   n_images: int = 2048, seed: int = 0) -> tuple[VisionTransformer, dict]:
    """Keep the ``heads`` most important heads and ``units`` most important MLP units of every
    block by ``score``; the taylor score ranks on ``n_images`` training images of ``data`` drawn
    with ``seed``. Returns the pruned copy and a record of what was kept and why (what the
    ``prune`` command saves as provenance)."""
    for b in model.blocks:
        if not 1 <= heads <= b.attn.num_heads:
            raise ValueError(f"heads: keep between 1 and {b.attn.num_heads} per block, got {heads}")
        if not 1 <= units <= b.mlp.fc1.out_features:
            raise ValueError(f"units: keep between 1 and {b.mlp.fc1.out_features} per block, got {units}")
    x = y = None
    if score == "taylor":
        if data is None:
            raise ValueError("the taylor score needs data: its training images rank the heads and units")
        # A fixed random sample of training images (never test images) ranks the heads and units.
        pick = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(seed))[:n_images]
        x, y = data.train_images[pick], data.train_labels[pick]
    head_scores, unit_scores = importance(model, score, x, y, seed=seed)
    keep_heads, keep_units = keep_top(head_scores, heads), keep_top(unit_scores, units)
    pruned = prune_model(model, keep_heads, keep_units)
    record = {"score": score, "score_images": len(y) if y is not None else 0, "seed": seed,
              "kept_heads": keep_heads, "kept_units": keep_units,
              "head_scores": [h.tolist() for h in head_scores],
              "widths": [list(w) for w in pruned.cfg.widths()]}
    return pruned, record


def keep_top(scores: list[torch.Tensor], n_keep: int) -> list[list[int]]:
    """In every block, the indices of the ``n_keep`` highest scores, in ascending order."""
    return [sorted(s.topk(min(n_keep, len(s))).indices.tolist()) for s in scores]


def drop_one_head_losses(model: VisionTransformer, images: torch.Tensor, labels: torch.Tensor,
                         batch_size: int = 256) -> list[torch.Tensor]:
    """The exact effect of every head: the loss on ``images`` with that one head removed, minus the
    loss of the whole model. One tensor per block; larger = more important (NaN for the only head
    of a block, which cannot go). Costs one pass over ``images`` per head, so it suits a model
    with few heads."""
    was_training = model.training

    def loss_of(m):
        m.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                x = images[start:start + batch_size]
                x = x.float().div(255) if x.dtype == torch.uint8 else x
                total += F.cross_entropy(m(x), labels[start:start + batch_size], reduction="sum").item()
        return total / len(labels)

    base = loss_of(model)
    all_heads = [list(range(b.attn.num_heads)) for b in model.blocks]
    all_units = [list(range(b.mlp.fc1.out_features)) for b in model.blocks]
    losses = []
    for i, block in enumerate(model.blocks):
        row = []
        for h in range(block.attn.num_heads):
            if block.attn.num_heads == 1:  # a block's last head cannot be removed
                row.append(float("nan"))
                continue
            keep = [hs if j != i else [k for k in hs if k != h] for j, hs in enumerate(all_heads)]
            row.append(loss_of(prune_model(model, keep, all_units)) - base)
        losses.append(torch.tensor(row))
    model.train(was_training)
    return losses


# --- Torch-Pruning, for a cross-check ----------------------------------------------------------

def prune_with_torch_pruning(model: VisionTransformer, heads: int, units: int) -> VisionTransformer:
    """A copy of ``model`` pruned by the Torch-Pruning library (``pip install torch-pruning``) to
    ``heads`` heads and ``units`` MLP hidden units per block, ranked by its group L2 magnitude. Only
    heads and hidden units go; the model width stays. The copy's config records the new widths."""
    import torch_pruning as tp

    if len({b.attn.num_heads for b in model.blocks}) > 1:
        raise ValueError("prune_with_torch_pruning expects every block to have the same number of heads")
    pruned = copy.deepcopy(model).eval()
    ratios = {}
    for b in pruned.blocks:
        if not 1 <= heads <= b.attn.num_heads or not 1 <= units <= b.mlp.fc1.out_features:
            raise ValueError(f"keep 1..{b.attn.num_heads} heads and 1..{b.mlp.fc1.out_features} units")
        ratios[b.attn.qkv] = 1 - heads / b.attn.num_heads
        ratios[b.mlp.fc1] = 1 - units / b.mlp.fc1.out_features
    example = torch.zeros(1, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size)
    pruner = tp.pruner.MetaPruner(
        pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.0, pruning_ratio_dict=ratios,  # nothing but the listed layers
        num_heads={b.attn.qkv: b.attn.num_heads for b in pruned.blocks},
        prune_num_heads=True, prune_head_dims=False,  # whole heads, each keeps its width
        head_pruning_ratio=1 - heads / pruned.blocks[0].attn.num_heads, ignored_layers=[pruned.head],
        unwrapped_parameters=[(pruned.pos_embed, 2)])  # (1, tokens, width): only the width could go
    pruner.step()
    for b in pruned.blocks:  # Torch-Pruning slices the layers; the head count is ours to update
        b.attn.num_heads = pruner.num_heads[b.attn.qkv]
        b.attn.attn_dim = b.attn.num_heads * b.attn.head_dim
    widths = tuple((b.attn.num_heads, b.mlp.fc1.out_features) for b in pruned.blocks)
    pruned.cfg = type(model.cfg)(**{**model.cfg.to_dict(), "block_widths": widths,
                                    "head_dim": model.cfg.head_width})
    pruned.provenance = {}
    return pruned


def kept_by(original: VisionTransformer, pruned: VisionTransformer) -> tuple[list[list[int]], list[list[int]]]:
    """(keep_heads, keep_units): which heads and MLP units of ``original`` survive in ``pruned``,
    found by matching the weights (each kept head's ``proj`` columns, each unit's ``fc1`` row)."""
    keep_heads, keep_units = [], []
    for a, b in zip(original.blocks, pruned.blocks):
        d = a.attn.head_dim
        cols = a.attn.proj.weight.detach().view(-1, a.attn.num_heads, d)
        kept = b.attn.proj.weight.detach().view(-1, b.attn.num_heads, d)
        where = f"block {len(keep_heads)}"
        keep_heads.append([_match(cols.transpose(0, 1).flatten(1), kept[:, k].flatten(), f"{where}, head {k}")
                           for k in range(b.attn.num_heads)])
        rows = a.mlp.fc1.weight.detach()
        keep_units.append([_match(rows, r, f"{where}, unit {u}") for u, r in enumerate(b.mlp.fc1.weight.detach())])
    return keep_heads, keep_units


def _match(candidates, row, where):
    hits = (candidates == row).all(1).nonzero().flatten().tolist()
    if len(hits) != 1:
        raise ValueError(f"{where} of the pruned model matches {len(hits)} of the original's, not one: "
                         "is it a pruned copy of this model, without identical rows?")
    return hits[0]


# --- unstructured pruning: zero single weights -------------------------------------------------

def prunable_weights(model: nn.Module):
    """(module name, module) of every ``nn.Linear`` and ``nn.Conv2d``: the weights unstructured
    pruning zeroes. Biases, LayerNorms and the position embedding stay dense."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global") -> nn.Module:
    """A copy of ``model`` with the share ``sparsity`` of its prunable weights set to zero, the
    smallest in absolute value first: ranked over all layers together (``scope="global"``) or
    within each layer (``"layer"``). The masks stay attached (``weight_orig`` and ``weight_mask``;
    the weight is their product), so a fine-tune keeps the zeros; ``remove_masks`` bakes them in."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity is the share of weights to zero, in [0, 1), got {sparsity}")
    pruned = copy.deepcopy(model)
    targets = [(m, "weight") for _, m in prunable_weights(pruned)]
    # The global ranking views every weight as one vector, so the tokenizer's channels-last
    # convolution weights are made contiguous for it, and given their layout back afterwards.
    channels_last = [m for m, _ in targets if m.weight.ndim == 4
                     and m.weight.is_contiguous(memory_format=torch.channels_last)]
    for m, _ in targets:
        m.weight.data = m.weight.data.contiguous()
    if scope == "global":
        torch_prune.global_unstructured(targets, torch_prune.L1Unstructured, amount=float(sparsity))
    elif scope == "layer":
        for m, name in targets:
            torch_prune.l1_unstructured(m, name, amount=float(sparsity))
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    with torch.no_grad():
        for m in channels_last:
            m.weight_orig.data = m.weight_orig.data.contiguous(memory_format=torch.channels_last)
            m.weight_mask = m.weight_mask.contiguous(memory_format=torch.channels_last)
            m.weight = m.weight_orig * m.weight_mask
    pruned.provenance = {}
    return pruned


def remove_masks(model: nn.Module) -> nn.Module:
    """Make the pruning permanent (in place): each ``weight_orig * weight_mask`` becomes a plain
    ``weight`` again, with its zeros."""
    for _, m in prunable_weights(model):
        if hasattr(m, "weight_mask"):
            torch_prune.remove(m, "weight")
    return model


def sparsity_table(model: nn.Module):
    """One row per prunable layer: its weights, how many are zero, and the share."""
    import pandas as pd

    rows = []
    for name, m in prunable_weights(model):
        w = m.weight.detach()
        rows.append((name, w.numel(), int((w == 0).sum()), (w == 0).float().mean().item()))
    return pd.DataFrame(rows, columns=["layer", "weights", "zeros", "sparsity"])


def csr_tensors(model: nn.Module, index_dtype=torch.int32) -> dict:
    """The model's weights with every prunable weight in compressed sparse row (CSR) form: three
    tensors ``NAME.values``, ``NAME.col_indices`` and ``NAME.crow_indices`` (indices in
    ``index_dtype``), plus ``NAME.shape``. A convolution's weight is stored as a matrix of its
    output channels. Everything else stays dense. ``from_csr_tensors`` reverses it."""
    if any(hasattr(m, "weight_mask") for _, m in prunable_weights(model)):
        raise ValueError("the model still has pruning masks attached: call remove_masks(model) first")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for name, m in prunable_weights(model):
        w = m.weight.detach()
        if max(w.shape[0] + 1, w[0].numel()) > torch.iinfo(index_dtype).max:
            raise ValueError(f"{name}: {tuple(w.shape)} has more rows or columns than {index_dtype} "
                             "indices can count; use a wider index type")
        with warnings.catch_warnings():  # "sparse CSR support is in beta": storing is all we do
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = w.reshape(w.shape[0], -1).to_sparse_csr()
        key = f"{name}.weight" if name else "weight"
        del state[key]
        state[f"{key}.values"] = csr.values()
        state[f"{key}.col_indices"] = csr.col_indices().to(index_dtype)
        state[f"{key}.crow_indices"] = csr.crow_indices().to(index_dtype)
        state[f"{key}.shape"] = torch.tensor(w.shape, dtype=torch.int64)
    return {k: v.contiguous() for k, v in state.items()}


def from_csr_tensors(tensors: dict) -> dict:
    """The dense state dict that ``csr_tensors`` stored."""
    state = {k: v for k, v in tensors.items() if not k.endswith((".values", ".col_indices",
                                                                  ".crow_indices", ".shape"))}
    for key in [k[: -len(".shape")] for k in tensors if k.endswith(".shape")]:
        shape = tuple(tensors[f"{key}.shape"].tolist())
        rows = shape[0]
        cols = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
        try:
            dense = torch.sparse_csr_tensor(tensors[f"{key}.crow_indices"].long(),
                                            tensors[f"{key}.col_indices"].long(),
                                            tensors[f"{key}.values"], (rows, cols),
                                            check_invariants=True).to_dense()
        except (RuntimeError, KeyError) as e:
            raise RuntimeError(f"{key}: not a valid CSR matrix of shape {shape} ({e})") from None
        state[key] = dense.reshape(shape)
    return state


def gzip_bytes(tensors: dict, level: int = 9) -> int:
    """Bytes of ``tensors`` as one .safetensors file after gzip: how far a general compressor
    gets on the zeros."""
    return len(_gzip(safetensors_blob(tensors), level))


def _gzip(blob: bytes, level: int = 9) -> bytes:
    """``blob`` gzipped reproducibly (no time stamp in the header)."""
    return gzip.compress(blob, compresslevel=level, mtime=0)


SPARSE_FORMATS = ("dense", "gzip", "csr64", "csr32")


def sparse_file_bytes(model: nn.Module, fmt: str) -> bytes:
    """The model's weights as the bytes of one file in ``fmt``: "dense" (a .safetensors file),
    "gzip" (that file, gzipped), "csr64" or "csr32" (``csr_tensors`` with 64- or 32-bit indices).
    ``from_csr_tensors`` and ``gzip.decompress`` turn the last three back into dense weights."""
    if fmt not in SPARSE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(SPARSE_FORMATS)}, got {fmt!r}")
    if fmt.startswith("csr"):
        return safetensors_blob(csr_tensors(model, torch.int64 if fmt == "csr64" else torch.int32))
    blob = safetensors_blob(model.state_dict())
    return _gzip(blob) if fmt == "gzip" else blob


def sparsity_sweep(model: nn.Module, data, levels: list[float], recipe=None, finetune: bool = True,
                   progress: bool = False) -> tuple[list[dict], dict]:
    """Magnitude-prune ``model`` to each sparsity in ``levels`` and measure it on ``data``'s test
    images: with global and with layer-by-layer thresholds, then (global, masks attached) after a
    fine-tune by ``recipe`` (default ``finetune-brief``) on ``data``'s training images, unless
    ``finetune=False``. Returns (rows, models): one dict per level (the accuracies, and the bytes
    of the global model's weights dense, in CSR with int64 and int32 indices, and gzipped), and
    the global models (fine-tuned, if they were) with their masks removed, by sparsity."""
    from .evaluate import evaluate
    from .recipes import get_recipe
    from .train import fit

    recipe = recipe or get_recipe("finetune-brief")
    rows, models = [], {}
    for s in levels:
        row = {"sparsity": float(s)}
        for scope in ("global", "layer"):
            row[scope] = evaluate(magnitude_prune(model, s, scope), data.test_images, data.test_labels)[0]
        tuned = magnitude_prune(model, s)
        if finetune:
            # The masks stay attached while it trains: a zeroed weight's gradient is multiplied by 0.
            tuned, history = fit(recipe, data, model=tuned, progress=progress)
            row["fine-tuned"] = history[-1]["test_acc"]
            row["fine-tune (s)"] = sum(h["epoch_time_s"] for h in history)
        models[float(s)] = tuned = remove_masks(tuned)
        row.update({fmt: len(sparse_file_bytes(tuned, fmt)) for fmt in SPARSE_FORMATS})
        rows.append(row)
        if progress:
            print(f"sparsity {s:.0%}: global {row['global']:.2%}, layer {row['layer']:.2%}"
                  + (f", fine-tuned {row['fine-tuned']:.2%}" if finetune else ""), flush=True)
    return rows, models
