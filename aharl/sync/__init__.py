"""Weight sync: moving the learner's weights into the rollout engine after each update.

One module per transport, each holding both sides under mirrored names:
``send`` runs in the learner (the sender), ``receive`` in the rollout
engine's process (the receiver; for vLLM, its worker, reached through
``collective_rpc``). Neither side knows of Ray: the order of calls between
them is :mod:`aharl.runtime.weight_sync`, which picks a transport from its
table by ``sync.method``.

- :mod:`~aharl.sync.shm`: safetensors bucket files in /dev/shm (CPU, or any
  layout on one node).
- :mod:`~aharl.sync.cuda_ipc`: one GPU shared by two processes; the receiver
  maps the sender's packed bucket (NCCL cannot pair two processes on one GPU).
- :mod:`~aharl.sync.nccl`: a broadcast from learner rank 0 when the rollout
  engine has GPUs of its own.
- :mod:`~aharl.sync.buckets`: bounded buckets and flat packing, shared by all.

``receive`` yields ``(name, tensor)`` pairs; loading them into the model is
the receiver's business (vLLM reloads differently on CPU and GPU).
"""
