"""Model weights as they travel: a dict of numpy arrays (zero-copy in Ray's object store)."""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from raydrift.errors import UserError

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


def torch_load_plain(source: str | os.PathLike[str] | IO[bytes], what: str, fix: str) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU: tensors and plain containers only.

    A file that holds anything else (a pickle that would build other objects or call a function) or
    cannot be read raises a one-line :class:`UserError` naming ``what`` and ending with ``fix``;
    torch's own message is not quoted (it suggests loading with ``weights_only`` off, which would run
    the file's code).
    """
    name = f"{what} '{source}'" if isinstance(source, (str, os.PathLike)) else what
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol: refused or read, never a warning line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch refused a global, a call, an opcode, or the bytes are garbage
        raise UserError(
            f"{name} is not a weights-only torch file: it holds objects other than tensors and plain values "
            f"(not written by raydrift or by torch.save of a state_dict, or altered) or is damaged; "
            f"refusing to read it; {fix}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure is a damaged or foreign file
        raise UserError(f"{name} cannot be read ({type(exc).__name__}): it is damaged or not a torch file; {fix}") from None


def load_weights(source: str | os.PathLike[str] | IO[bytes], what: str = "weights file") -> dict[str, Any]:
    """A state_dict (or any plain container of tensors) from a file or a binary stream, on the CPU;
    only tensors and plain values are unpickled (``weights_only=True``). A file holding anything else,
    or damaged, raises a one-line :class:`UserError` (:func:`torch_load_plain`)."""
    fix = "save the model's weights with torch.save(model.state_dict(), path)"
    state = torch_load_plain(source, what, fix)
    if not isinstance(state, dict):
        raise UserError(f"{what} holds a {type(state).__name__}, not a state_dict; {fix}")
    return state


def check_weights_file(path: str | os.PathLike[str], what: str = "model.checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict in ``path``: a file, read weights-only, a dict of tensors by ``str`` names.

    Raises
    ------
    UserError
        One line: missing, not weights-only, damaged, or not a dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} '{p}' not found: give the path of a saved state_dict")
    state = load_weights(p, what=what)
    bad = next((k for k, v in state.items() if type(k) is not str or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise UserError(f"{what} '{p}' is not a state_dict: entry {bad!r:.60} is not a named tensor")
    return state


def shared_tensors(arrays: Iterable[np.ndarray]) -> list[torch.Tensor]:
    """Tensors over ``arrays``' memory, not copied. Arrays from Ray's object store are read-only,
    which ``torch.from_numpy`` warns about: the caller only reads them, or copies them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return [torch.from_numpy(a) for a in arrays]
