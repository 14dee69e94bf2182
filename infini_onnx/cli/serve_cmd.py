"""`infini serve MODEL.onnx`: the HTTP API on Ray Serve (needs the [serve] extra).

Ray is imported when the command runs, after the model and the options have been checked.
"""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

import click

from infini_onnx.cli.common import FiniteFloatRange, one_line_errors
from infini_onnx.errors import InfiniError, InputError

MIB = 1 << 20
# A generation holds its stream until it ends or its client leaves: one request's share.
DEFAULT_MAX_NEW_TOKENS_LIMIT = 4096
MAX_NEW_TOKENS_LIMIT = 1 << 20


@click.command("serve")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--replicas",
    type=click.IntRange(1, 1024),
    default=2,
    show_default=True,
    help="Worker replicas holding streams.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default="infini-state",
    show_default=True,
    help="Where stream checkpoints live: shared storage (NFS) for several nodes.",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to deploy to (e.g. HEAD:6379 or auto); the command returns and "
    "the cluster keeps serving. Default: a local Ray, until Ctrl-C.",
)
@click.option(
    "--name",
    default="infini",
    show_default=True,
    help="Ray Serve application name, and the model's name in /v1/models.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="onnxruntime threads per replica.",
)
@click.option(
    "--replica-cpus",
    type=FiniteFloatRange(0, 1024),
    default=1.0,
    show_default=True,
    help="CPUs Ray reserves per replica.",
)
@click.option(
    "--memory-budget-mb",
    type=click.IntRange(1, 1 << 30),
    default=2048,
    show_default=True,
    help="Resident stream states per replica, in MiB.",
)
@click.option(
    "--idle-timeout",
    type=FiniteFloatRange(0.1, 1e9),
    default=600.0,
    show_default=True,
    help="Seconds before an idle stream leaves memory.",
)
@click.option(
    "--max-body-mb",
    type=FiniteFloatRange(0.001, 1024),
    default=8.0,
    show_default=True,
    help="Largest request body, in MiB.",
)
@click.option(
    "--max-new-tokens-limit",
    type=click.IntRange(1, MAX_NEW_TOKENS_LIMIT),
    default=DEFAULT_MAX_NEW_TOKENS_LIMIT,
    show_default=True,
    help="Most tokens one generate or completion request may ask for (more is refused with 400).",
)
@click.option(
    "--cache-memory-mb",
    type=click.IntRange(1, 1 << 30),
    default=256,
    show_default=True,
    help="The state store's memory per replica (prefixes of /v1/completions), in MiB.",
)
@click.option(
    "--cache-disk-mb",
    type=click.IntRange(1, 1 << 30),
    default=4096,
    show_default=True,
    help="The state store's directory (STATE_DIR/prefix-store, shared), in MiB.",
)
@click.option(
    "--cache-every",
    type=click.IntRange(1, 1 << 20),
    default=None,
    help="Segments between the boundaries a long prompt keeps in the store (default: the "
    "runtime's StateStore default, 256).",
)
@one_line_errors
def serve_command(model, replicas, host, port, state_dir, address, name, threads, replica_cpus,
                  memory_budget_mb, idle_timeout, max_body_mb, max_new_tokens_limit,
                  cache_memory_mb, cache_disk_mb, cache_every):  # fmt: skip
    """Serve streams of MODEL.onnx over HTTP on Ray Serve (docs/serving.md).

    \b
    POST   /v1/streams                {} or {"fork": ID}        -> {"id"}
    POST   /v1/streams/ID/feed        {"text"} or {"ids"}       -> {"tokens_seen"}
    POST   /v1/streams/ID/generate    {"prompt", "max_new_tokens", "temperature", ...,
                                       "stream": true for server-sent events}
    GET    /v1/streams/ID             -> {"tokens_seen", ...}
    DELETE /v1/streams/ID             -> {}
    POST   /v1/completions            OpenAI's: {"prompt", "max_tokens", "temperature",
                                       "top_p", "stop", "stream"} -> {"choices": [...]}
    GET    /v1/models
    GET    /healthz, /metrics
    """
    from infini_onnx.runtime import InfiniModel
    from infini_onnx.runtime.device import check_threads
    from infini_onnx.serve.streams import StreamTable

    model_path, state_dir = Path(model).resolve(), Path(state_dir).resolve()
    checked = InfiniModel(model_path, threads=1)  # one-line errors before Ray starts
    if address is None:  # replicas on this machine (a cluster's nodes check their own cores)
        check_threads(threads)
    budget = memory_budget_mb * MIB
    StreamTable(checked, state_dir, budget, idle_timeout)  # the state dir and the budget
    if address is None:
        _check_port_free(host, port)
    try:
        import ray
        from ray import serve

        from infini_onnx.serve.ray_app import build_app
    except ImportError as e:
        raise InputError(f'infini serve needs the serve extra: pip install "infini-onnx[serve]" '
                         f"({e.name} is missing)") from None  # fmt: skip

    context = ray.init(address=address, include_dashboard=False, log_to_driver=False,
                       logging_level="warning")  # fmt: skip
    serve.start(http_options={"host": host, "port": port})
    tokenizer = checked.tokenizer.to_str() if checked.tokenizer is not None else None
    app = build_app(
        model_path, state_dir, replicas, threads=threads, replica_cpus=replica_cpus,
        budget_bytes=budget, idle_seconds=idle_timeout, max_body_bytes=int(max_body_mb * MIB),
        max_new_tokens=max_new_tokens_limit, tokenizer_json=tokenizer, model_name=name,
        cache={"ram_bytes": cache_memory_mb * MIB, "disk_bytes": cache_disk_mb * MIB,
               **({"every": cache_every} if cache_every else {})},
    )  # fmt: skip
    click.echo(f"deploying {replicas} replica(s) of {model_path.name} ...", err=True)
    serve.run(app, name=name, route_prefix="/", blocking=False)
    click.echo(
        f"serving http://{host}:{port}/v1 (streams, completions; {replicas} replicas, states "
        f"in {state_dir})",
        err=True,
    )
    if address is not None:
        return
    click.echo(f"Ray at {context.address_info['gcs_address']}; `infini serve ... --address auto` "
               "on this machine updates this application (e.g. --replicas); Ctrl-C stops it",
               err=True)  # fmt: skip
    _wait_for_signal()
    click.echo("stopping ...", err=True)
    serve.shutdown()
    ray.shutdown()


def _check_port_free(host: str, port: int) -> None:
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise InfiniError(f"cannot serve on {host}:{port} ({e.strerror or e})") from None


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
