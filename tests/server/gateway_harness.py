"""An in-process device gateway for the protocol tests: the real HTTP server on
127.0.0.1, the real `Gateway` and `GatewayGrid`, rounds opened from a thread as the
round loop opens them, without a SuperLink (the federation test runs that)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from devicetune.device.litert import LiteRTModel
from devicetune.fleet.messages import weights_to_record
from devicetune.server.gateway import Gateway
from devicetune.server.gateway_api import GatewayServer, create_gateway_app
from devicetune.server.gateway_grid import GATEWAY_NODE_BASE, GatewayGrid

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT / "examples" / "reference_phone"))
from phone import ReferencePhone, fetch_version  # noqa: E402, F401

TOKEN = "fleet-enrollment-token-for-tests"
MAX_REPORT_BYTES = 64 << 10
CHECKIN_INTERVAL_S = 10.0
INSTRUCTIONS = {"local-epochs": 1, "learning-rate": 0.01, "proximal-mu": 0.0,
                "private": False}


def start_weights(artifacts: Path) -> dict[str, np.ndarray]:
    return LiteRTModel(artifacts / "model.tflite").get_weights()


class GatewayHarness:
    """A served gateway over ``artifacts`` whose rounds a test opens with `round`."""

    def __init__(self, out: Path, artifacts: Path, max_update_norm: float = 100.0,
                 timeout_s: float = 30.0) -> None:
        self.artifacts = artifacts
        self.start = start_weights(artifacts)
        self.names = sorted(self.start)
        # A phone stays in the pool for about two check-in intervals: long enough for
        # a loaded test machine to open the round after its check-in.
        self.gateway = Gateway(out, TOKEN, self.names, max_update_norm,
                               checkin_interval_s=CHECKIN_INTERVAL_S, slots=4)
        app = create_gateway_app(self.gateway, artifacts, max_report_bytes=MAX_REPORT_BYTES)
        self.server = GatewayServer(app).start()
        self.grid = GatewayGrid(self.gateway, None, target=2, timeout_s=timeout_s)
        self.replies: list[Any] = []
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def phone(self, x: np.ndarray | None = None, y: np.ndarray | None = None,
              **kwargs: Any) -> ReferencePhone:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(20, 128, 9)).astype(np.float32) if x is None else x
        y = rng.integers(0, 6, 20) if y is None else y
        phone = ReferencePhone(self.url, x, y, verify=False, **kwargs)
        phone.enroll(TOKEN)
        return phone

    def open_round(self, number: int, devices: list[int]) -> None:
        """Send round ``number``'s train messages to ``devices`` from a thread (as the
        loop does); `close` waits for its replies."""
        from flwr.app import ConfigRecord, Message, RecordDict

        from devicetune.fleet.grid import _become_the_server_app

        _become_the_server_app()  # messages carry a run id, as in a ServerApp
        self.grid.begin_round(number)
        missing = {GATEWAY_NODE_BASE + d for d in devices} - set(self.grid.get_node_ids())
        assert not missing, f"devices {missing} are not in the pool: check them in first"
        arrays = weights_to_record(self.names, [self.start[n] for n in self.names])
        messages = [Message(RecordDict({"arrays": arrays, "config": ConfigRecord(
            {**INSTRUCTIONS, "server-round": number})}), dst_node_id=GATEWAY_NODE_BASE + d,
            message_type="train") for d in devices]
        self.replies = []
        self._thread = threading.Thread(
            target=lambda: self.replies.extend(self.grid.send_and_receive(messages)))
        self._thread.start()
        # The loop's send_and_receive opens the round before it waits.
        while self.gateway.round is None or self.gateway.round.number != number:
            self._thread.join(0.01)

    def close(self) -> list[Any]:
        """Wait for the open round to end (target reached or the deadline)."""
        assert self._thread is not None
        self._thread.join()
        return self.replies

    def stop(self) -> None:
        self.gateway.close_round()
        self.server.stop()
