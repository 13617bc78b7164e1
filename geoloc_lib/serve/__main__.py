"""Command line: serve a run to a browser and to programs (`geoloc-serve`, or `python -m geoloc_lib.serve`).

    geoloc-serve runs/demo                   # http://127.0.0.1:8765/ : the page; POST /predict: the JSON API
    geoloc-serve runs/demo --port 0          # any free port (the line it prints names it)

The run is loaded once, then every question costs one forward pass. It listens on this machine only
(127.0.0.1); `--host 0.0.0.0` lets anyone who can reach this machine send it photos, and says so. Ctrl-C stops
it. A problem that stops it (not a run folder, the port taken) is one line, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from geoloc_lib.base.command_line import (
    CommandParser,
    port_number,
    positive_float,
    positive_int,
    run_main,
)

PROG = "geoloc-serve"
DEFAULT_PORT = 8765


def parser() -> argparse.ArgumentParser:
    cli = CommandParser(
        prog=PROG,
        description="Serve a trained run (Phase 1 or 2): a page to drop photos on, and a JSON API.",
        epilog="Endpoints: GET / (the page), POST /predict (multipart photos -> JSON), GET /run, GET /health.",
    )
    cli.add_argument("run_dir", help="a Phase 1 or 2 run folder, e.g. runs/demo (only read, never written)")
    cli.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    cli.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free port"
    )
    cli.add_argument("--max-upload-mb", type=positive_float, default=25.0, help="per photo (default 25)")
    cli.add_argument("--max-photos", type=positive_int, default=16, help="per request (default 16)")
    cli.add_argument("--top-k", type=positive_int, default=5, help="hypotheses per answer (default 5)")
    cli.add_argument(
        "--checkpoint", default="best", help="best (default), last, or a file name in checkpoints/"
    )
    cli.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, ..."
    )
    cli.add_argument("--data-dir", help="the run's data folder, if it moved since training")
    cli.add_argument(
        "--batch-photos",
        type=positive_int,
        default=32,
        help="photos of waiting requests placed in one forward pass (default 32; 1: one request at a time)",
    )
    return cli


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # no Nagle delay on the accepted connections (they inherit it): an answer sent as headers, then body,
    # otherwise waits for the client's delayed acknowledgement, 40 ms on Linux, on every request
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({err.strerror}); choose another --port (0: any free one)"
        ) from None
    sock.listen(128)  # connections wait here while the server starts
    return sock


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from geoloc_lib.serve.app import create_app
    from geoloc_lib.serve.asker import Asker, Limits

    limits = Limits(args.max_upload_mb, args.max_photos, args.top_k)
    asker = Asker.from_run(
        args.run_dir, limits, args.checkpoint, args.device, args.data_dir, args.batch_photos
    )
    sock = listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    if not loopback(args.host):
        print(
            f"{PROG}: warning: listening on {args.host}, not this machine only: anyone who can reach it on port "
            f"{port} can send photos to this model and read what the run is",
            file=sys.stderr,
        )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"{PROG}: {asker.facts['run']} at http://{shown}:{port}/ (POST /predict for programs; Ctrl-C stops)",
        flush=True,
    )
    config = uvicorn.Config(create_app(asker), log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down cleanly on Ctrl-C, then passes the signal on
        pass
    print(f"{PROG}: stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    run_main(PROG, parser(), run, argv)


if __name__ == "__main__":
    main()
