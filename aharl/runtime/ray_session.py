"""Joining or starting the Ray cluster a run's actors live in."""

from __future__ import annotations

import os
import socket

import ray

from aharl.errors import AharlError, describe, first_line

# Seconds to wait for the cluster's GCS to accept a connection and answer.
# ray.init itself retries an unreachable address for minutes, which looks like a hang.
CONNECT_TIMEOUT_S = 10.0
# The HTTP/2 client preface and an empty SETTINGS frame: the GCS (a gRPC server)
# answers with a SETTINGS frame of its own; anything else is not a Ray cluster.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS_FRAME = 0x04
_UNSET = "unset RAY_ADDRESS to start Ray in this process"


def connect_ray(stream_actor_logs: bool = True) -> None:
    """Join the cluster of ``ray job submit`` (RAY_ADDRESS is set) or start one in-process.

    ``stream_actor_logs``: print the actors' output in the driver; off when it
    goes to the run's log files, and then Ray's own start-up warnings (token
    authentication, resources) stay off the console too, at ERROR.

    With RAY_ADDRESS set, the address is checked first (a TCP connection, a
    gRPC greeting and one call carrying the auth token, each within
    :data:`CONNECT_TIMEOUT_S`), so a wrong or dead address or a wrong token is
    one line naming RAY_ADDRESS instead of ray.init's minutes of retries.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_ray_address(address)
    level = "WARNING" if stream_actor_logs else "ERROR"
    try:
        ray.init(address=address, log_to_driver=stream_actor_logs, logging_level=level)
    except (ConnectionError, ValueError) as exc:
        if address is None:
            raise
        reason = describe(exc, 200)
        raise AharlError(
            f"cannot join the Ray cluster at RAY_ADDRESS={address} ({reason}); check the address and, "
            f"if the cluster uses token authentication, RAY_AUTH_TOKEN; or {_UNSET}"
        ) from None


def check_ray_address(address: str) -> None:
    """Raise a one-line :class:`AharlError` unless a Ray GCS answers at ``address`` within the timeout.

    ``auto`` and ``local`` are left to Ray (they look for or start a local instance).
    """
    if address in ("auto", "local"):
        return
    scheme, sep, rest = address.partition("://")
    if sep and scheme != "ray":
        raise AharlError(
            f"RAY_ADDRESS={address} is a {scheme} address (the dashboard's, which `ray job submit --address` takes); "
            f"`aharl train` joins the cluster itself: set RAY_ADDRESS=HEAD_IP:6379 (the GCS address), or {_UNSET}"
        )
    host, port = _host_and_port(rest if sep else address, address)
    where = f"RAY_ADDRESS={address}"
    try:
        connection = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer in {CONNECT_TIMEOUT_S:.0f}s"
        raise AharlError(
            f"no Ray cluster at {where} ({reason}); start one there (ray start --head --port={port}), "
            f"fix the address, or {_UNSET}"
        ) from None
    with connection:
        if _tls_enabled():
            return  # a TLS GCS does not answer a plain greeting; ray.init does the rest
        if not _answers_grpc(connection):
            raise AharlError(
                f"{where} accepts connections but is not a Ray cluster's GCS; point it at the head node's GCS port "
                f"(6379 unless `ray start --port` chose another; `ray status` on the head prints it), or {_UNSET}"
            )
    if sep:
        return  # a Ray Client server (ray://) serves other calls than the GCS's
    refused = _token_refused(f"{host}:{port}")
    if refused:
        raise AharlError(
            f"the Ray cluster at {where} refused this process's token ({refused}); set RAY_AUTH_TOKEN to the cluster's "
            f"token (the one its head was started with, or the head's ~/.ray/auth_token), or {_UNSET}"
        )


def _host_and_port(text: str, address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` split; a missing or non-numeric port is one line naming RAY_ADDRESS."""
    host, sep, port_text = text.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AharlError(
            f"RAY_ADDRESS={address} is not HOST:PORT; set it to the head node's GCS address, e.g. 10.0.0.1:6379, or {_UNSET}"
        )
    return host, int(port_text)


def _tls_enabled() -> bool:
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true", "yes")


def _answers_grpc(connection: socket.socket) -> bool:
    """Whether the peer answers an HTTP/2 greeting with a SETTINGS frame, as every gRPC server does at once."""
    try:
        connection.settimeout(CONNECT_TIMEOUT_S)
        connection.sendall(_HTTP2_PREFACE)
        header = b""
        while len(header) < 9:  # an HTTP/2 frame header: length (3), type (1), flags (1), stream (4)
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == _SETTINGS_FRAME


def _token_refused(address: str) -> str | None:
    """The GCS's reason when it refuses this process's authentication token, else None.

    One call (the cluster id, as ray.init's first), sent with the token Ray
    itself would send. ray.init retries a refused token for about 20 seconds,
    one warning line a second, before a generic ConnectionError. Any other
    outcome, or a Ray without these modules, is left to ray.init.
    """
    try:
        import grpc
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:
        return None
    try:
        channel = init_grpc_channel(address, asynchronous=False)
    except Exception:  # a Ray whose private helper changed: skip the early check
        return None
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=CONNECT_TIMEOUT_S)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return first_line(exc.details() or "", 200) or "unauthenticated"
        return None
    finally:
        channel.close()
    return None
