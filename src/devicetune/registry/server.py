"""Run the registry's HTTP API with uvicorn: in the foreground, or in a thread for tests.

`RegistryServer` binds its socket before uvicorn starts, so port 0 picks a free port
with no window in which another process could take it. With a certificate and its
private key (PEM files) both serve HTTPS only, so the publish token never crosses the
network in plaintext.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn

from devicetune.errors import ConfigError
from devicetune.registry.api import create_app
from devicetune.registry.store import Registry


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_options(certificate: Path | None, private_key: Path | None) -> dict[str, Any]:
    """uvicorn's TLS settings for a PEM certificate and key; both or neither.

    Raises:
        ConfigError: one without the other, or a file that cannot be read.
    """
    if (certificate is None) != (private_key is None):
        raise ConfigError("give --certificate and --private-key together (PEM files) to "
                          "serve HTTPS")
    if certificate is None or private_key is None:
        return {}
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            certificate, private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--certificate {certificate} / --private-key {private_key}: "
                          f"not a usable PEM certificate and key ({exc})") from None
    return {"ssl_certfile": str(certificate), "ssl_keyfile": str(private_key)}


def serve(registry: Registry, *, token: str | None, host: str = "127.0.0.1",
          port: int = 8080, certificate: Path | None = None,
          private_key: Path | None = None) -> None:
    """Serve ``registry`` until interrupted (Ctrl-C / SIGTERM); HTTPS with a certificate."""
    config = uvicorn.Config(create_app(registry, token=token), host=host, port=port,
                            log_level="info", access_log=True,
                            **tls_options(certificate, private_key))
    uvicorn.Server(config).run()


class BackgroundServer:
    """An ASGI app served by uvicorn from a background thread, on a socket bound when
    the object is made (port 0: a free one, with no window in which another process
    could take it); HTTPS when ``tls`` holds a certificate and key; a context manager.
    The registry and the device gateway are served this way."""

    def __init__(self, app: Any, *, host: str, port: int, tls: dict[str, Any],
                 thread_name: str, timeout_keep_alive_s: int = 5) -> None:
        self.scheme = "https" if tls else "http"
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                     socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", access_log=False,
                                timeout_keep_alive=timeout_keep_alive_s, **tls)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]},
                                        name=thread_name, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the {self._thread.name} thread stopped while starting")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        """Finish the requests in flight, then stop."""
        self._server.should_exit = True
        self._thread.join()
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class RegistryServer(BackgroundServer):
    """A registry served from a background thread; a context manager.

    Example::

        with RegistryServer(Registry(root), token="t") as server:
            RegistryClient(server.url, token="t").publish(folder)
    """

    def __init__(self, registry: Registry, *, token: str | None,
                 host: str = "127.0.0.1", port: int = 0, certificate: Path | None = None,
                 private_key: Path | None = None) -> None:
        super().__init__(create_app(registry, token=token), host=host, port=port,
                         tls=tls_options(certificate, private_key),
                         thread_name="registry-server")
