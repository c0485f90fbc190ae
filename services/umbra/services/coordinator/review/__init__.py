"""The review page: a person reviews a protection job's previews in a browser (issue 27; docs/review.md).

Starlette served by uvicorn on its own HTTP port (UMBRA_REVIEW_PORT), in a daemon thread of the coordinator's
process; it calls the coordinator's own gRPC API over a loopback channel with the signed-in tenant's API key, so
it may do exactly what that key may do. `start(config, store)` binds the port at once (a port already taken
stops the coordinator's start with one line: StartupError) and returns the function that stops it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

import uvicorn

from umbra.runtime.config import ServiceConfig
from umbra.runtime.sql import StartupError
from umbra.services.coordinator.review.api import CoordinatorApi
from umbra.services.coordinator.review.app import create_app
from umbra.services.coordinator.review.session import Sessions, fernet_key

log = logging.getLogger(__name__)
ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: a taken port stays taken
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(f"the review page cannot listen on {host}:{port} (UMBRA_REVIEW_PORT): "
                           f"{exc.strerror or exc}; is the port taken by another process?") from None
    return sock


def start(config: ServiceConfig, store) -> Callable[[], None]:
    """Serves the review page on config.host:config.review_port until the returned function is called."""
    if not config.port:
        raise StartupError("the review page needs the coordinator's gRPC port fixed (UMBRA_COORDINATOR_PORT), "
                           "not 0: it calls that port")
    sock = _bind(config.host, config.review_port)
    grpc_host = "127.0.0.1" if config.host in ANY_ADDRESS else config.host
    api = CoordinatorApi(f"{grpc_host}:{config.port}", store)
    app = create_app(api, Sessions(fernet_key(config.review_secret, config.service_token)),
                     secure_cookies=config.review_secure_cookies)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=2, server_header=False))

    def run() -> None:
        asyncio.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, name="review-page", daemon=True)
    thread.start()
    log.info("review page on http://%s:%d/", config.host, config.review_port)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
        api.close()

    return stop
