"""How big a model is: its parameters, and the bytes of its weights as ``torch.save`` and as
one .safetensors file write them."""
import io

import torch
from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values (weights and biases) of ``model``; with ``trainable_only``,
    those that require a gradient."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the model's state_dict as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def safetensors_blob(tensors: dict[str, torch.Tensor]) -> bytes:
    """``tensors`` (name -> tensor) as the bytes of one .safetensors file, without metadata."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def tensors_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of ``tensors`` written as one .safetensors file, without metadata."""
    return len(safetensors_blob(tensors))


def safetensors_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as one .safetensors file (what ``save_model`` writes, less
    its metadata)."""
    return tensors_bytes(model.state_dict())
