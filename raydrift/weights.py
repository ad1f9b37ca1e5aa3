"""Model weights as they travel: a dict of numpy arrays (zero-copy in Ray's object store)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import IO, Any

import numpy as np
import torch
from torch import nn

Weights = dict[str, np.ndarray]


def to_numpy(state_dict: dict[str, torch.Tensor]) -> Weights:
    """A state_dict as numpy arrays (on the CPU, detached, contiguous)."""
    return {k: v.detach().cpu().contiguous().numpy().copy() for k, v in state_dict.items()}


def to_state_dict(weights: Weights) -> dict[str, torch.Tensor]:
    """numpy weights back to tensors. Copies, since arrays from the object store are read-only."""
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in weights.items()}


def load_into(model: nn.Module, weights: Weights | dict[str, torch.Tensor]) -> None:
    """Load weights (numpy or torch) into ``model`` in place."""
    sd = {
        k: (torch.from_numpy(np.array(v, copy=True)) if isinstance(v, np.ndarray) else v)
        for k, v in weights.items()
    }
    model.load_state_dict(sd)


def save_weights(weights: Weights | dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    sd = {
        k: torch.from_numpy(np.array(v, copy=True)) if isinstance(v, np.ndarray) else v
        for k, v in weights.items()
    }
    torch.save(sd, path)


def load_weights(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
    """A state_dict (or any plain container of tensors) from a file or a binary stream, on the CPU;
    only tensors are unpickled (``weights_only=True``)."""
    return torch.load(source, map_location="cpu", weights_only=True)


def shared_tensors(arrays: Iterable[np.ndarray]) -> list[torch.Tensor]:
    """Tensors over ``arrays``' memory, not copied. Arrays from Ray's object store are read-only,
    which ``torch.from_numpy`` warns about: the caller only reads them, or copies them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return [torch.from_numpy(a) for a in arrays]
