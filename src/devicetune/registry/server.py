"""Run the registry's HTTP API with uvicorn: in the foreground, or in a thread for tests.

`RegistryServer` binds its socket before uvicorn starts, so port 0 picks a free port
with no window in which another process could take it.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import uvicorn

from devicetune.registry.api import create_app
from devicetune.registry.store import Registry


def serve(registry: Registry, *, token: str | None, host: str = "127.0.0.1",
          port: int = 8080) -> None:
    """Serve ``registry`` until interrupted (Ctrl-C / SIGTERM)."""
    config = uvicorn.Config(create_app(registry, token=token), host=host, port=port,
                            log_level="info", access_log=True)
    uvicorn.Server(config).run()


class RegistryServer:
    """A registry served from a background thread; a context manager.

    Example::

        with RegistryServer(Registry(root), token="t") as server:
            RegistryClient(server.url, token="t").publish(folder)
    """

    def __init__(self, registry: Registry, *, token: str | None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(create_app(registry, token=token), log_level="warning",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]},
                                        name="registry-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RegistryServer:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the registry server thread stopped while starting")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        """Finish the requests in flight, then stop."""
        self._server.should_exit = True
        self._thread.join()
        self._socket.close()

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
