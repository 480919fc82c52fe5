"""The SuperLink and SuperNode launchers (server/processes.py) set Flower module
constants before Flower starts. A Flower upgrade that renamed one would turn its setting
into a new, unused global, silently: each must still exist where it is set."""

from __future__ import annotations

import importlib

import pytest

from devicetune.server import processes

SET_BY_THE_LAUNCHERS = [
    ("flwr.supercore.corestate.sql_corestate", "OBJECT_PUSH_SESSION_TTL_SECONDS"),
    ("flwr.supercore.corestate.in_memory_corestate", "OBJECT_PUSH_SESSION_TTL_SECONDS"),
    ("flwr.supercore.sql_mixin", "SQLITE_PRAGMAS"),
    ("flwr.supercore.heartbeat", "HEARTBEAT_CALL_TIMEOUT"),
    ("flwr.supernode.fleet_http_client", "HEARTBEAT_CALL_TIMEOUT"),
    ("flwr.supernode.fleet_http_connection", "make_simple_http_retry_invoker"),
]


@pytest.mark.parametrize(("module", "name"), SET_BY_THE_LAUNCHERS)
def test_each_constant_a_launcher_sets_exists_in_flower(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name)
    launchers = processes._SUPERLINK + processes._SUPERNODE
    assert f"import {module} as" in launchers and f".{name}" in launchers


def test_sqlite_still_has_a_busy_timeout_to_raise() -> None:
    from flwr.supercore.sql_mixin import SQLITE_PRAGMAS

    assert "busy_timeout" in dict(SQLITE_PRAGMAS)
