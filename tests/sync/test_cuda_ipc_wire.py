"""The CUDA IPC handle survives vLLM's own collective_rpc encoder (no pickle fallback), on CPU.

torch's ``reduce_tensor`` gives a function, classes and a dtype; vLLM's
msgpack encoder refuses all three, which crashed the first colocated sync.
"""

from __future__ import annotations

import pytest
import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor

from aharl.sync.cuda_ipc import from_wire, to_wire

# The shape of rebuild_cuda_tensor's arguments for a packed uint8 bucket (a CPU
# machine cannot make a real handle; the types are what matter to the encoder).
REBUILD_ARGS = (
    torch.Tensor,
    torch.Size([4096]),
    (1,),
    0,
    torch.storage.TypedStorage,
    torch.uint8,
    0,
    b"\x01cuda-ipc-handle",
    4096,
    512,
    False,
    b"ref-counter",
    8,
    b"event",
    True,
)


@pytest.fixture(scope="module")
def vllm_channel():
    serial_utils = pytest.importorskip("vllm.v1.serial_utils")
    encoder, decoder = serial_utils.MsgpackEncoder(), serial_utils.MsgpackDecoder()
    return lambda value: decoder.decode(encoder.encode(value))


def test_the_raw_torch_handle_is_refused_by_vllms_encoder(vllm_channel, monkeypatch):
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    with pytest.raises(TypeError):
        vllm_channel({"handle": (rebuild_cuda_tensor, REBUILD_ARGS), "meta": []})


def test_the_wire_handle_crosses_vllms_channel_and_rebuilds_the_same_arguments(vllm_channel, monkeypatch):
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    meta = [("model.embed_tokens.weight", "bfloat16", [8, 4], 0, 64)]
    received = vllm_channel({"handle": to_wire(REBUILD_ARGS), "meta": meta})
    args = from_wire(received["handle"], device_index=3)
    assert args[:6] == REBUILD_ARGS[:6] and args[7:] == REBUILD_ARGS[7:]
    assert args[6] == 3  # the receiver's own device ordinal
    name, dtype, shape, offset, length = received["meta"][0]  # what unpack_bucket reads
    assert (name, dtype, list(shape), offset, length) == meta[0]


def test_a_handle_naming_another_class_is_refused():
    wire = to_wire(REBUILD_ARGS)
    wire[0] = "os.system"
    with pytest.raises(ValueError, match="not one torch rebuilds"):
        from_wire(wire, 0)
