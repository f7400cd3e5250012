"""States travel as one flat buffer (generalist/distributed/flat_state.py); a learner's EMA already is one.

Packing must only move bytes (the Ray backend's bit-for-bit parity with the in-process one rests on it), and
a state laid out by mixing.flat_clone must be handed on as it is, without the copy a concatenation makes."""

from __future__ import annotations

import numpy as np
import torch

from generalist.distributed.flat_state import FlatLayout
from generalist.mixing import clone_state, flat_clone
from generalist.models import build_model


def model_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    model(torch.rand(4, 3, 32, 32))  # BatchNorm statistics and counters move off their initial values
    return model.state_dict()


def test_flat_clone_holds_the_same_values_in_one_buffer_and_keeps_integer_buffers_apart():
    state = model_state()
    flat = flat_clone(state)
    assert list(flat) == list(state)
    for name, tensor in state.items():
        assert flat[name].dtype == tensor.dtype and torch.equal(flat[name], tensor)
        assert flat[name].untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr()  # a copy
    storages = {t.untyped_storage().data_ptr() for t in flat.values() if t.is_floating_point()}
    assert len(storages) == 1
    counters = [t for t in flat.values() if not t.is_floating_point()]
    assert counters and not any(t.untyped_storage().data_ptr() in storages for t in counters)


def test_pack_of_a_flat_clone_is_the_buffer_itself_and_of_any_other_state_a_copy():
    state = model_state()
    layout = FlatLayout(state)
    laid_out = flat_clone(state)
    packed, _ = layout.pack(laid_out)
    some_weight = next(t for t in laid_out.values() if t.is_floating_point())
    assert np.shares_memory(packed, some_weight.numpy())  # handed on without a copy
    plain = clone_state(state)
    packed_plain, _ = layout.pack(plain)
    assert not any(np.shares_memory(packed_plain, t.numpy()) for t in plain.values() if t.is_floating_point())
    np.testing.assert_array_equal(packed, packed_plain)


def test_unpack_of_pack_gives_back_every_tensor_bit_for_bit():
    state = model_state()
    layout = FlatLayout(state)
    for source in (state, flat_clone(state)):
        back = layout.unpack(*layout.pack(source))
        assert list(back) == list(state)
        assert all(torch.equal(back[n], state[n]) and back[n].dtype == state[n].dtype for n in state)


def test_writable_copy_is_a_new_buffer_its_views_write_into():
    state = model_state()
    flat, views = FlatLayout(state).writable_copy(state)
    name = next(n for n, t in views.items() if t.is_floating_point())
    views[name].add_(1.0)
    assert np.shares_memory(flat, views[name].numpy())
    assert not torch.equal(views[name], state[name])  # the source is untouched
