"""Serve a checkpoint over HTTP: generate (streamed or not), score, sessions, info, health, and a page to play with.

``python serve.py CHECKPOINT [--host 127.0.0.1] [--port 8000] [--threads N] [--max-body B] [--max-text N]
[--max-length N] [--max-concurrent N] [--max-sessions N] [--session-ttl S] [--access-log]``

Prints one line with the address once it accepts connections, and serves until Ctrl-C or SIGTERM (then it lets
requests in progress finish for up to 5 s, and exits with code 130). The server is charrnn/server.py on FastAPI and
uvicorn; docs/serve.md describes the API, the limits and why this framework.
"""

import errno
import socket
import sys

from charrnn import entry

if __name__ == "__main__":
    entry.start()  # before torch is imported (seconds): see charrnn/entry.py

import torch
import uvicorn

from charrnn import api, cores, server
from charrnn.command import ArgumentParser, exit_code
from charrnn.errors import UsageError

DEFAULTS = server.Limits()
LIMIT_FLAGS = (  # server.Limits' fields as flags: (name, metavar, what it bounds)
    ("max_body", "B", "bytes of a request body, at most"),
    ("max_text", "N", "characters of a prime, a stop string or a text to score"),
    ("max_length", "N", "characters one request may generate"),
    ("max_concurrent", "N", "POST requests in progress at once; more are refused"),
    ("max_sessions", "N", "named sessions kept at once"),
    ("session_ttl", "S", "seconds a session is kept after its last request"),
)


def _parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt file, or a run directory (its newest last.ckpt)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine "
                                                       "only; 0.0.0.0 for every network)")  # fmt: skip
    p.add_argument("--port", type=int, default=8000, help="the TCP port (default 8000; 0: any free one, printed)")
    p.add_argument(
        "--threads",
        metavar="N",
        type=int,
        default=cores.available(),
        help="worker threads that generate and score (default: the cores this process may use)",
    )
    for name, metavar, what in LIMIT_FLAGS:
        default = getattr(DEFAULTS, name)
        p.add_argument(
            f"--{name.replace('_', '-')}",
            metavar=metavar,
            type=type(default),
            default=default,
            help=f"{what} (default {default})",
        )
    p.add_argument("--access-log", action="store_true", help="one line on stderr per request")
    return p


def _check(args) -> None:
    for flag in ("threads", "max_body", "max_text", "max_length", "max_concurrent", "max_sessions"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be 1 or more, got {getattr(args, flag)}")
    if not 0 < args.session_ttl < float("inf"):
        raise UsageError(f"--session-ttl must be a number of seconds above 0, got {args.session_ttl}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port``; a UsageError if that address cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]  # fmt: skip
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port whose old connections
    try:  # are still closing, never one that is listening
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        hint = "; pass another --port (0: any free one)" if e.errno == errno.EADDRINUSE else ""
        raise UsageError(f"cannot listen on {host} port {port}: {e.strerror}{hint}") from None
    return sock


def run(argv) -> None:
    args = _parser().parse_args(argv)
    _check(args)
    model = api.load(args.checkpoint)
    torch.set_num_threads(1)  # scoring runs on the worker threads: they, not torch's pool, use the cores
    limits = server.Limits(args.max_body, args.max_text, args.max_length, args.max_concurrent, args.max_sessions,
                           args.session_ttl, args.threads)  # fmt: skip
    app = server.app(model, limits)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {model.path} ({model.arch.cell} {model.arch.num_layers} x {model.arch.hidden_size}) on "
          f"http://{shown}:{port}/", flush=True)  # fmt: skip
    config = uvicorn.Config(app, log_level="warning", access_log=args.access_log, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def main(argv=None) -> int:
    return exit_code(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(entry.run(main))
