"""``shared.array_values`` reads exactly what ``Array.numpy()`` reads, and fails where it fails."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from shared.array_values import nbytes, record_values, values


def _npy(array: np.ndarray, version: tuple[int, int] | None = None) -> Array:
    """An ``Array`` holding what ``np.save`` (or the given ``.npy`` version) writes."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    data = buffer.getvalue()
    return Array(dtype=str(array.dtype), shape=tuple(array.shape), stype="numpy.ndarray", data=data)


CASES = {
    "float32 matrix": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "Fortran order": np.asfortranarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4)),
    "0-d": np.array(3.5),
    "empty": np.zeros((0, 5), np.float32),
    "bool": np.array([True, False, True]),
    "big-endian int": np.arange(6, dtype=">i8").reshape(2, 3),
    "uint32": np.array([0, 2**32 - 1], dtype=np.uint32),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_equal_what_numpy_loads(name):
    array = Array(CASES[name])
    got, want = values(array), array.numpy()
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert not got.flags.writeable  # a view of the message's bytes: never changed in place


def test_a_version_2_header_and_a_record():
    array = np.arange(10, dtype=np.int16)
    assert np.array_equal(values(_npy(array, version=(2, 0))), array)
    record = ArrayRecord({"a": Array(np.ones((2, 3), np.float32)), "b": Array(np.zeros(5, np.float64))})
    assert {k: v.tolist() for k, v in record_values(record).items()} == {"a": [[1.0] * 3] * 2, "b": [0.0] * 5}
    assert nbytes(record) == 2 * 3 * 4 + 5 * 8


def test_a_truncated_or_foreign_array_fails_as_array_numpy_fails():
    whole = Array(np.arange(8, dtype=np.float64))
    truncated = Array(dtype=whole.dtype, shape=whole.shape, stype=whole.stype, data=whole.data[:-8])
    with pytest.raises(ValueError) as ours:
        values(truncated)
    with pytest.raises(ValueError) as flowers:
        truncated.numpy()
    assert str(ours.value) == str(flowers.value)
    foreign = Array(dtype="float32", shape=(2,), stype="torch.raw", data=b"\x00" * 8)
    with pytest.raises(TypeError, match="Unsupported serialization type"):
        values(foreign)
    not_npy = Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"\x00" * 8)
    with pytest.raises(ValueError):
        values(not_npy)


def test_a_minor_version_numpy_refuses_is_refused_alike():
    good = Array(np.arange(3, dtype=np.float32))
    odd = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:7] + b"\x05" + good.data[8:])
    with pytest.raises(ValueError) as ours:
        values(odd)
    with pytest.raises(ValueError) as flowers:
        odd.numpy()
    assert str(ours.value) == str(flowers.value)


def test_an_unreadable_or_zero_width_array_rejects_that_reply_not_the_round(monkeypatch):
    # A device's reply is untrusted input: validation names what is wrong with it and the
    # round goes on without it (server.validation's promise), whatever bytes it carries.
    from flwr.app import Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from server.validation import train_reply_problem
    from shared.messages import TrainMetrics

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)  # the server's process builds the message
    expected = ArrayRecord({"w": Array(np.zeros(8, np.float32))})
    metrics = TrainMetrics(num_examples=3, train_loss=0.5, epsilon=1.0, steps=1, sample_rate=0.5, bytes_sent=32).record()

    def reply_with(array: Array) -> Message:
        return Message(RecordDict({"arrays": ArrayRecord({"w": array}), "metrics": metrics}), dst_node_id=0, message_type="train")

    whole = Array(np.zeros(8, np.float32))
    truncated = Array(dtype=whole.dtype, shape=whole.shape, stype=whole.stype, data=whole.data[:-4])
    assert train_reply_problem(reply_with(truncated), expected).startswith("array w is unreadable (")
    zero_width = Array(np.zeros(8, dtype="V0"))
    assert np.array_equal(values(zero_width), zero_width.numpy())  # read, as numpy reads it
    assert train_reply_problem(reply_with(zero_width), expected) == "array w has dtype |V0, expected float32"
    assert train_reply_problem(reply_with(whole), expected) is None
