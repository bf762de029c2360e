"""Running the app on uvicorn: bind first (a busy port fails before the model loads), load on the
worker thread while /health answers 503, and on SIGINT/SIGTERM cancel the running job and answer
queued ones 503 before uvicorn drains the connections."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from ..errors import EntropixError
from .app import Server
from .worker import DEAD, LOADING


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or an `EntropixError` saying why the address cannot be used."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise EntropixError(
            f"--host {host}: cannot resolve it ({e.strerror}); pass an address like 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise EntropixError(
            f"--host {host} --port {port}: cannot listen there ({e.strerror}); pick another --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(server: Server, **options: Any) -> Any:
    import uvicorn

    worker = server.worker

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            worker.shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        server,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        **options,
    )
    return _Server(config)


def serve(server: Server, sock: socket.socket) -> None:
    """Start the worker (it loads the model) and serve on `sock` until SIGINT/SIGTERM; a model
    that fails to load stops the server (the worker's `on_error` has said why)."""
    uv = _uvicorn_server(server)
    worker = server.worker

    def stop_if_dead() -> None:
        while worker.state == LOADING:
            time.sleep(0.05)
        if worker.state == DEAD:
            uv.should_exit = True

    worker.start()
    threading.Thread(target=stop_if_dead, daemon=True).start()
    uv.run(sockets=[sock])
    worker.shutdown()


class Background:
    """The app on uvicorn in a thread (tests, the load test): `url`, then `stop()`."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self._uvicorn = _uvicorn_server(server)
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> Background:
        self.server.worker.start()
        self._thread.start()
        while not self._uvicorn.started and self._thread.is_alive():
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self.server.worker.shutdown()
        self._uvicorn.should_exit = True
        self._thread.join(10)
        self.sock.close()

    def __enter__(self) -> Background:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
