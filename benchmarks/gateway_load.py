"""Load on the device gateway: thousands of asyncio clients speaking protocol v1 on
loopback against a gateway in its own process (whose CPU time and memory are measured).

Each round the server samples ``--per-round`` x over-selection of the devices in its
pool and closes at ``--per-round`` reports. Active clients check in, fetch the round's
weights, send a valid update (the start weights plus small noise, safetensors) and
check in again; the rest of the enrolled devices exist only as credentials. Prints
check-ins/s, reports/s, p50/p99 latency per endpoint, server CPU per accepted report,
round wall time and the server's peak RSS, for each enrolled count::

    .venv/bin/python benchmarks/gateway_load.py --artifacts BUILD \\
        --enrolled 1000 10000 --per-round 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

TOKEN = "benchmark-enrollment-token-0123456789"
# A device stays in the pool for about two of these after a check-in; the clients of one
# asyncio process (one core) must cycle through every active device within that.
CHECKIN_INTERVAL_S = 5.0


def _proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = next(int(line.split()[1]) * 1024 for line in
                Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    return cpu, peak


def _server(artifacts: str, port: int, rounds: int, per_round: int, control) -> None:  # noqa: ANN001
    """The gateway process: serve, wait for the pool, run ``rounds`` rounds."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from devicetune.device.litert import LiteRTModel
    from devicetune.fleet.grid import _become_the_server_app
    from devicetune.fleet.messages import weights_to_record
    from devicetune.server.gateway import Gateway
    from devicetune.server.gateway_api import GatewayServer, create_gateway_app
    from devicetune.server.gateway_grid import GatewayGrid

    start = LiteRTModel(Path(artifacts) / "model.tflite").get_weights()
    names = sorted(start)
    out = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    over = 1.3
    gateway = Gateway(out, TOKEN, names, 1e6, checkin_interval_s=CHECKIN_INTERVAL_S,
                      slots=int(per_round * over))
    app = create_gateway_app(gateway, Path(artifacts), max_report_bytes=16 << 20)
    GatewayServer(app, port=port).start()
    grid = GatewayGrid(gateway, None, target=per_round, timeout_s=120.0)
    _become_the_server_app()
    control.send("ready")
    control.recv()  # enrollment done, clients running
    filling = time.monotonic() + 60.0  # clients slower than that: run with whom is there
    while len(gateway.waiting()) < per_round and time.monotonic() < filling:
        time.sleep(0.2)
    cpu0, _ = _proc_stats(os.getpid())
    walls, accepted = [], 0
    arrays = weights_to_record(names, [start[n] for n in names])
    for number in range(1, rounds + 1):
        began = time.perf_counter()
        grid.begin_round(number)
        nodes = random.sample(grid.get_node_ids(), min(len(grid.get_node_ids()),
                                                       int(per_round * over)))
        config = ConfigRecord({"local-epochs": 1, "learning-rate": 0.01,
                               "proximal-mu": 0.0, "private": False,
                               "server-round": number})
        messages = [Message(RecordDict({"arrays": arrays, "config": config}),
                            dst_node_id=node, message_type="train") for node in nodes]
        accepted += len(grid.send_and_receive(messages))
        walls.append(time.perf_counter() - began)
        time.sleep(CHECKIN_INTERVAL_S)  # the pool refills; late reports arrive (410)
    cpu1, peak = _proc_stats(os.getpid())
    control.send({"walls": walls, "accepted": accepted, "cpu_s": cpu1 - cpu0,
                  "peak_rss": peak, "refused": dict(gateway.refused)})


async def _clients(url: str, enrolled: int, active: int, stop: asyncio.Event,
                   latency: dict[str, list[float]]) -> int:
    import httpx
    from safetensors.numpy import load, save

    limits = httpx.Limits(max_connections=active, max_keepalive_connections=active)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as http:
        async def timed(kind: str, call):  # noqa: ANN001, ANN202
            began = time.perf_counter()
            answer = await call
            latency[kind].append(time.perf_counter() - began)
            return answer

        credentials: list[str] = []
        for first in range(0, enrolled, 500):
            answers = await asyncio.gather(*[timed("enroll", http.post("/v1/enroll", json={
                "enrollment_token": TOKEN, "platform": "android"}))
                for _ in range(first, min(enrolled, first + 500))])
            credentials += [a.json()["credential"] for a in answers]
        rng = np.random.default_rng(0)
        checkins = [0]

        async def device(credential: str) -> None:
            auth = {"authorization": f"Bearer {credential}"}
            body = {"platform": "android", "charging": True, "unmetered": True,
                    "idle": True}
            await asyncio.sleep(random.uniform(0, CHECKIN_INTERVAL_S))
            while not stop.is_set():
                answer = (await timed("checkin", http.post("/v1/checkin", json=body,
                                                           headers=auth))).json()
                checkins[0] += 1
                task = answer["task"]
                if task is None:
                    await asyncio.sleep(answer["retry_after_s"])
                    continue
                weights = load((await timed("weights", http.get(task["weights_url"],
                                                                headers=auth))).content)
                update = {k: v + rng.normal(0, 1e-3, v.shape).astype(np.float32)
                          for k, v in weights.items()}
                report = save(update, metadata={"num_examples": "32", "train_loss": "1.0"})
                await timed("report", http.post(
                    f"/v1/tasks/{task['task_id']}/report", content=report,
                    headers={**auth, "content-type": "application/octet-stream"}))

        tasks = [asyncio.create_task(device(c)) for c in credentials[:active]]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return checkins[0]


def run(artifacts: Path, enrolled: int, per_round: int, rounds: int) -> dict:
    from devicetune.server.processes import free_port

    port = free_port()
    parent, child = mp.get_context("spawn").Pipe()
    server = mp.get_context("spawn").Process(
        target=_server, args=(str(artifacts), port, rounds, per_round, child), daemon=True)
    server.start()
    assert parent.recv() == "ready"
    latency: dict[str, list[float]] = {k: [] for k in ("enroll", "checkin", "weights",
                                                       "report")}
    active = min(enrolled, int(per_round * 1.5))

    async def main() -> tuple[int, dict, float]:
        stop = asyncio.Event()
        clients = asyncio.create_task(_clients(f"http://127.0.0.1:{port}", enrolled,
                                               active, stop, latency))
        while len(latency["enroll"]) < enrolled:
            await asyncio.sleep(0.2)
        for kind in ("checkin", "weights", "report"):
            latency[kind].clear()
        parent.send("go")
        began = time.perf_counter()
        while not parent.poll():
            await asyncio.sleep(0.2)
        result = parent.recv()
        elapsed = time.perf_counter() - began
        stop.set()
        return await clients, result, elapsed

    checkins, result, elapsed = asyncio.run(main())
    server.kill()
    result.update(enrolled=enrolled, active=active, checkins=checkins, elapsed_s=elapsed,
                  latency={k: (np.percentile(v, 50), np.percentile(v, 99), len(v))
                           for k, v in latency.items() if v})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--enrolled", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--per-round", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| enrolled | active | round wall s | check-ins/s | reports/s | p50/p99 ms "
          "check-in | p50/p99 ms weights | p50/p99 ms report | server CPU ms / accepted "
          "report | server peak RSS MB |")
    print("|---:|---:|---|---:|---:|---|---|---|---:|---:|")
    results = []
    for enrolled in args.enrolled:
        r = run(args.artifacts, enrolled, args.per_round, args.rounds)
        lat = {k: f"{v[0] * 1e3:.0f} / {v[1] * 1e3:.0f}" for k, v in r["latency"].items()}
        walls = ", ".join(f"{w:.1f}" for w in r["walls"])
        print(f"| {enrolled:,} | {r['active']:,} | {walls} | {r['checkins'] / r['elapsed_s']:.0f}"
              f" | {r['accepted'] / sum(r['walls']):.0f} | {lat.get('checkin')} | "
              f"{lat.get('weights')} | {lat.get('report')} | "
              f"{r['cpu_s'] / max(1, r['accepted']) * 1e3:.2f} | "
              f"{r['peak_rss'] / 2**20:.0f} |", flush=True)
        print(f"  refused: {r['refused']}", flush=True)
        results.append({k: v for k, v in r.items() if k != "latency"} | {"latency_ms": {
            k: {"p50": v[0] * 1e3, "p99": v[1] * 1e3, "n": v[2]}
            for k, v in r["latency"].items()}})
    print(json.dumps({"benchmark": "gateway_load", "per_round": args.per_round,
                      "results": results}))


if __name__ == "__main__":
    main()
