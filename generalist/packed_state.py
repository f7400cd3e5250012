"""A model's state dict laid out in one byte buffer, so it is mixed, sent and copied as one array.

The floating tensors (weights, BatchNorm running statistics) come first, back to back, so the mixing
arithmetic runs over them as one flat float tensor; the integer buffers (BatchNorm's num_batches_tracked)
follow, each aligned to 8 bytes. One buffer per state means one message per collective and one kernel per
arithmetic pass, whatever the number of tensors in the model. The layout only moves bytes: arithmetic on
the flat view is element for element the arithmetic on the tensors, so results are bit-identical.
"""

from __future__ import annotations

import torch

StateDict = dict[str, torch.Tensor]

_ALIGN = 8  # bytes: every integer tensor starts at a multiple of the widest integer element


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


class StateLayout:
    """Where each tensor of a state dict lives in the one byte buffer (same names, shapes and dtypes)."""

    def __init__(self, state: StateDict):
        self.order = list(state)
        self.float_names = [n for n, t in state.items() if t.is_floating_point()]
        dtypes = {state[n].dtype for n in self.float_names}
        if len(dtypes) > 1:
            raise ValueError(f"one floating dtype per model is supported, got {sorted(map(str, dtypes))}")
        self.float_dtype = dtypes.pop() if dtypes else torch.float32
        self.float_numel = sum(state[n].numel() for n in self.float_names)
        self.specs: dict[str, tuple[int, torch.dtype, tuple[int, ...]]] = {}  # name -> (byte offset, dtype, shape)
        offset = 0
        for name in self.float_names:
            tensor = state[name]
            self.specs[name] = (offset, tensor.dtype, tuple(tensor.shape))
            offset += tensor.numel() * tensor.element_size()
        self.float_nbytes = offset
        self.int_offset = _aligned(offset)
        offset = self.int_offset
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                offset = _aligned(offset)
                self.specs[name] = (offset, tensor.dtype, tuple(tensor.shape))
                offset += tensor.numel() * tensor.element_size()
        self.nbytes = _aligned(offset)

    def allocate(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """An uninitialised buffer of this layout: (nbytes,) uint8."""
        return torch.empty(self.nbytes, dtype=torch.uint8, device=device)

    def floats(self, buffer: torch.Tensor) -> torch.Tensor:
        """(float_numel,) view of every floating tensor of the state, back to back, in state order."""
        return buffer[: self.float_nbytes].view(self.float_dtype)

    def integer_bytes(self, buffer: torch.Tensor) -> torch.Tensor:
        """The bytes of the integer buffers (copied whole, never averaged)."""
        return buffer[self.int_offset:]

    def views(self, buffer: torch.Tensor) -> StateDict:
        """A state dict whose tensors are views into `buffer` (writing a view writes the buffer)."""
        out = {}
        for name in self.order:
            offset, dtype, shape = self.specs[name]
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            out[name] = buffer[offset:offset + nbytes].view(dtype).view(shape)
        return out

    @torch.no_grad()
    def pack(self, state: StateDict, device: torch.device | str | None = None) -> torch.Tensor:
        """A new buffer holding a copy of `state` (on `device`, default the state's own)."""
        if device is None:
            device = next(iter(state.values())).device if state else "cpu"
        buffer = torch.zeros(self.nbytes, dtype=torch.uint8, device=device)  # zeros: padding is deterministic
        for name, view in self.views(buffer).items():
            view.copy_(state[name])
        return buffer
