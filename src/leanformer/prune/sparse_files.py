"""Storing a magnitude-pruned model: its weights in compressed sparse row (CSR) form, or gzipped,
to see when that is smaller than the dense file. ``sparse_file_bytes`` writes each format;
``from_csr_tensors`` reads CSR back.
"""
import gzip
import warnings

import torch
from torch import nn

from ..measure.size import safetensors_blob
from .magnitude import prunable_weights


def csr_tensors(model: nn.Module, index_dtype: torch.dtype = torch.int32) -> dict[str, torch.Tensor]:
    """The model's weights with every prunable weight in compressed sparse row (CSR) form: three
    tensors ``NAME.values``, ``NAME.col_indices`` and ``NAME.crow_indices`` (indices in
    ``index_dtype``), plus ``NAME.shape``. A convolution's weight is stored as a matrix of its
    output channels. Everything else stays dense. ``from_csr_tensors`` reverses it."""
    if any(hasattr(m, "weight_mask") for _, m in prunable_weights(model)):
        raise ValueError("the model still has pruning masks attached: "
                         "call remove_masks_(model) first")
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


def from_csr_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def gzip_bytes(tensors: dict[str, torch.Tensor], level: int = 9) -> int:
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
