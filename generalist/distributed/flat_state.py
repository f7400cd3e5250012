"""State dicts as one flat buffer, so a sync moves one contiguous array through Ray's object store.

A model's floating tensors are packed into a single float buffer (plus the few integer buffers, kept as
they are). Ray stores a numpy array as one block and hands readers a zero-copy view, where a dict of
hundreds of tensors would be pickled and copied tensor by tensor. Packing and unpacking only move bytes:
the mixing arithmetic still runs per element exactly as on the dict, so results are bit-identical.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from generalist.mixing import StateDict, flat_clone


class FlatLayout:
    """Where each floating tensor of a state dict lives in the flat buffer."""

    def __init__(self, state: StateDict):
        self.names = [n for n, t in state.items() if t.is_floating_point()]
        dtypes = {state[n].dtype for n in self.names}
        if len(dtypes) > 1:
            raise ValueError(f"one floating dtype per model is supported, got {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else torch.float32
        self.shapes = [tuple(state[n].shape) for n in self.names]
        self.sizes = [state[n].numel() for n in self.names]
        self.order = list(state)

    def pack(self, state: StateDict) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """(flat float buffer on the CPU, the integer buffers) of `state`.

        A state built by mixing.flat_clone (a learner's EMA, the coordinator's global state) already is
        that buffer: on the CPU it is handed on as it is, without a copy; any other state is concatenated."""
        flat = self._whole_buffer(state)
        if flat is None:
            flat = torch.cat([state[n].detach().reshape(-1) for n in self.names])
        others = {n: t.detach().cpu() for n, t in state.items() if not t.is_floating_point()}
        return flat.detach().cpu().numpy(), others

    def _whole_buffer(self, state: StateDict) -> torch.Tensor | None:
        """The one contiguous buffer the floating tensors of `state` are views of, in layout order; else None."""
        tensors = [state[n] for n in self.names]
        if not tensors:
            return None
        storage, offset = tensors[0].untyped_storage(), 0
        for tensor, size in zip(tensors, self.sizes):
            if (tensor.untyped_storage().data_ptr() != storage.data_ptr() or tensor.storage_offset() != offset
                    or not tensor.is_contiguous()):
                return None
            offset += size
        if storage.nbytes() != offset * tensors[0].element_size():
            return None
        return torch.as_strided(tensors[0], (offset,), (1,), 0)

    def unpack(self, flat: np.ndarray, others: dict[str, torch.Tensor]) -> StateDict:
        """A state dict whose floating tensors are views into `flat` (no copy; read-only if flat is)."""
        with warnings.catch_warnings():  # Ray's zero-copy arrays are read-only; readers only read them
            warnings.simplefilter("ignore", UserWarning)
            buffer = torch.from_numpy(flat)
        views = dict(zip(self.names, (v.view(s) for v, s in zip(buffer.split(self.sizes), self.shapes))))
        return {n: views[n] if n in views else others[n] for n in self.order}

    def writable_copy(self, state: StateDict) -> tuple[np.ndarray, StateDict]:
        """A fresh flat buffer holding `state` (on the CPU), and a state dict of writable views into it."""
        copy = flat_clone({n: t.cpu() for n, t in state.items()})
        return self.pack(copy)[0], copy
