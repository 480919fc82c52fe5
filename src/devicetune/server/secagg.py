"""Secure aggregation: Flower's SecAgg+ workflow as one way of running a round.

With ``server.secagg = true`` the server learns only the weighted mean of the sampled
devices' updates, never one device's update (Bell et al. 2020). Flower 1.42 offers
SecAgg+ only on its legacy path: `SecAggPlusWorkflow` (server) needs a `LegacyContext`
with a legacy-style strategy (``configure_fit`` / ``aggregate_fit``), and
`secaggplus_mod` (device) wraps a train handler that reads and writes the legacy
``fitins.*`` / ``fitres.*`` records. Neither accepts a Message-API strategy or the
``arrays`` / ``metrics`` records the rest of devicetune speaks. So this module runs the
workflow as an alternative round: devices are sampled by the configured (Message-API)
strategy as in every round, the workflow's four stages (keys, shares, masked vectors,
unmasking) run over the same grid, and a minimal legacy strategy hands the workflow the
sampled nodes and takes back the unmasked mean. On the device, `secagg_when_asked`
applies Flower's mod only to SecAgg+ messages, so one ClientApp serves both paths.

What secure aggregation rules out, by design: validating one device's update (shape,
NaN, norm bound: the server sees only the mean; the mean itself is checked) and robust
aggregation (a median needs the individual updates); so SecAgg+ runs with FedAvg only.
Devices send their update (new weights minus the global ones), which stays within the
quantisation range far better than raw weights do.

References:
    Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"
    (SecAgg+), CCS 2020.
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning" (SecAgg), CCS 2017.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import numpy as np

from devicetune.errors import ConfigError
from devicetune.fleet.messages import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, record_to_weights

# Quantisation of the weighted update (Flower's defaults, except the range: updates are
# small, and a tighter range means a finer quantum). A device's weight in the mean is
# num_examples / MAX_WEIGHT; every coordinate of weight * update must lie within
# +-CLIPPING_RANGE or it is clipped.
CLIPPING_RANGE = 1.0
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
MAX_WEIGHT = 1000.0
LEGACY_FITINS = "fitins.parameters"


def check_secagg_config(server: Any) -> None:
    """Refuse settings SecAgg+ cannot serve (a user error, caught before serving)."""
    if server.secagg and server.strategy != "fedavg":
        raise ConfigError(f"server.secagg = true needs strategy = 'fedavg', not "
                          f"{server.strategy!r}: secure aggregation reveals only the mean "
                          "update, which a median, trimmed mean, Krum or FedAdam cannot use")


def share_counts(sampled: int) -> tuple[int, int]:
    """SecAgg+'s (num_shares, reconstruction_threshold) for ``sampled`` devices: each
    device shares its keys with an odd number of neighbours, about 2 log2(n) + 1
    (everyone, in small rounds), and a majority of them can unmask a dropped one."""
    shares = min(sampled, 2 * math.ceil(math.log2(max(sampled, 2))) + 1)
    if shares < sampled and shares % 2 == 0:
        shares += 1
    return shares, shares // 2 + 1


def error_bound(num_examples: list[int], max_abs_update: float) -> float:
    """How far the unmasked mean may be from the exact weighted mean, per coordinate:
    stochastic rounding moves each device's weighted update by less than one quantum,
    and each weight is itself rounded to a multiple of 1 / QUANTIZATION_RANGE."""
    ratios = np.array(num_examples, float) / MAX_WEIGHT
    quantized = np.round(ratios * QUANTIZATION_RANGE)
    quantum = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
    rounding = len(num_examples) * quantum / (quantized.sum() / QUANTIZATION_RANGE)
    weights = 2 * max_abs_update * float(np.max(np.abs(quantized / (ratios * QUANTIZATION_RANGE)
                                                       - 1)))
    return rounding + weights


# ----------------------------------------------------------------------------- server


class _SampledDevices:
    """The legacy strategy `SecAggPlusWorkflow` asks: which devices and with what
    instructions (``configure_fit``), and what to do with the unmasked mean
    (``aggregate_fit``, which only keeps it)."""

    def __init__(self, grid: Any, nodes: list[int], config: dict[str, Any]) -> None:
        self.grid, self.nodes, self.config = grid, nodes, config
        self.results: list[Any] = []
        self.mean: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any
                      ) -> list[tuple[Any, Any]]:
        from flwr.common import FitIns
        from flwr.server.compat.grid_client_proxy import GridClientProxy

        return [(GridClientProxy(node, self.grid, self.grid.run.run_id),
                 FitIns(parameters, dict(self.config))) for node in self.nodes]

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]
                      ) -> tuple[Any, dict[str, Any]]:
        from flwr.common import parameters_to_ndarrays

        self.results = [fit_res for _, fit_res in results]
        if results:
            # The workflow put the unmasked mean into every result's parameters.
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}


class SecAggRound:
    """Run one attempt at a round through SecAgg+ (the ``run_round`` of
    `run_round_with_quorum`), updating ``loop.weights`` when the quorum holds."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop

    def __call__(self, grid: Any, server_round: int, attempt: int) -> Any:
        from flwr.app import ConfigRecord, Context, RecordDict
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.workflow import SecAggPlusWorkflow
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
        from flwr.server.workflow.constant import Key as WorkflowKey

        from devicetune.fleet.messages import weights_to_record
        from devicetune.server.loop import RoundRecord
        from devicetune.server.strategies import set_sample_size
        from devicetune.server.validation import update_norm

        loop, start = self.loop, time.perf_counter()
        grid.begin_round(server_round)
        online = len(grid.get_node_ids())
        set_sample_size(loop.strategy, min(loop.devices_per_round, online))
        random.seed(hash((loop.seed, server_round)) if attempt == 0
                    else hash((loop.seed, server_round, attempt)))
        config = {**loop.instructions.to_config(), "server-round": server_round}
        global_record = weights_to_record(loop.names, loop.weights)
        # The strategy samples as in a plain round; its messages are not sent.
        nodes = [m.metadata.dst_node_id for m in loop.strategy.configure_train(
            server_round, global_record, ConfigRecord(config), grid)] if online >= 3 else []
        devices = _SampledDevices(grid, nodes, config)
        if len(nodes) >= 3:
            shares, threshold = share_counts(len(nodes))
            context = LegacyContext(
                Context(run_id=grid.run.run_id, node_id=0, node_config={},
                        state=RecordDict(), run_config={}),
                strategy=devices)  # type: ignore[arg-type]
            context.state.array_records[MAIN_PARAMS_RECORD] = weights_to_record(
                loop.names, loop.weights)
            context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
                {WorkflowKey.CURRENT_ROUND: server_round})
            SecAggPlusWorkflow(shares, threshold, max_weight=MAX_WEIGHT,
                               clipping_range=CLIPPING_RANGE,
                               quantization_range=QUANTIZATION_RANGE,
                               modulus_range=MODULUS_RANGE,
                               timeout=loop.round_timeout_s)(grid, context)
        completed, rejected = len(devices.results), 0
        quorum = devices.mean is not None and completed >= max(loop.min_devices, 1)
        if quorum:
            update = [np.asarray(u, np.float64) for u in devices.mean]
            proposed = [(w + u).astype(np.float32) for w, u in zip(loop.weights, update,
                                                                    strict=True)]
            # Only the mean can be checked: one bad device poisons it, unseen.
            if not all(np.all(np.isfinite(p)) for p in proposed) or \
                    update_norm(proposed, loop.weights) > loop.max_update_norm:
                quorum, rejected = False, completed
            else:
                loop.weights = proposed
        losses = [float(r.metrics.get("train-loss", np.nan)) for r in devices.results]
        evaluation = loop.evaluate(loop.weights)
        return RoundRecord(
            round=server_round, sampled=len(nodes), completed=completed - rejected,
            dropped=len(nodes) - completed, rejected=rejected,
            global_accuracy=evaluation.get("accuracy"),
            mean_local_loss=float(np.mean(losses)) if losses else None,
            wall_s=round(time.perf_counter() - start, 4),
            extra={"secagg": True, **({} if quorum else {"quorum": False})},
        )


# ----------------------------------------------------------------------------- device


def secagg_when_asked(message: Any, context: Any, call_next: Any) -> Any:
    """A ClientApp mod: Flower's `secaggplus_mod` for SecAgg+ messages, nothing for
    the others (the mod alone would refuse every plain train message)."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if message.metadata.message_type == "train" and message.has_content() and \
            RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def is_secagg_train(message: Any) -> bool:
    """Whether a train message carries the legacy layout of a SecAgg+ round."""
    return LEGACY_FITINS in message.content.array_records


def train_for_secagg(message: Any, names: list[str], train: Any) -> Any:
    """Answer a SecAgg+ train message: decode the legacy ``fitins`` records, train as
    in a plain round (``train`` takes and returns the Message-API layout), and reply
    with the update (not the weights) in the legacy ``fitres`` layout for the mod to
    mask."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from devicetune.fleet.messages import weights_to_record

    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    start = [np.asarray(a, np.float32) for a in parameters_to_ndarrays(fitins.parameters)]
    if len(start) != len(names):
        raise ConfigError(f"the server sent {len(start)} weight arrays, the artifact has "
                          f"{len(names)}; serve and run the same build")
    # Train on the same message in the plain layout (a new Message would need the
    # run identity a ClientApp process does not set), then restore what the mod sent.
    legacy = message.content
    message.content = RecordDict({ARRAYS: weights_to_record(names, start),
                                  CONFIG: ConfigRecord(dict(fitins.config))})
    try:
        reply = train(message)
    finally:
        message.content = legacy
    if reply.has_error():
        return Message(reply.error, reply_to=message)
    _, new = record_to_weights(reply.content[ARRAYS])
    update = [n.astype(np.float64) - s for n, s in zip(new, start, strict=True)]
    metrics = dict(reply.content[METRICS])
    fit_res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update),
                     int(metrics.pop(NUM_EXAMPLES)), metrics)
    return Message(compat.fitres_to_recorddict(fit_res, keep_input=True), reply_to=message)
