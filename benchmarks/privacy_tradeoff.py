"""What user-level differential privacy costs: global accuracy against epsilon.

On simulations/scale_10k.toml (10,000 synthetic devices, 1,000 per round, 10 rounds,
vectorized engine), one run without DP and one per target epsilon. The federation
learns the head from scratch (``server.initial_head = "fresh"``, 3 local epochs) on the
centrally pretrained backbone, so what it learns is what DP can cost. For each target
the noise multiplier is planned with dp-accounting (RDP, the budget gate's accountant)
so that 10 Poisson-sampled rounds at q = 0.1 spend at most that epsilon at delta 1e-5;
the clip norm 0.2 is about the median device update norm (measured: p10 0.12, median
0.19, p90 0.29). Each run reports the epsilon it actually spent.

Run:  .venv/bin/python benchmarks/privacy_tradeoff.py [--epsilons 8 4 2 1] [--clip-norm 0.2]
Prints a table and one JSON line. The artifacts are built once and shared.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 4.0, 2.0, 1.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip-norm", type=float, default=0.2)
    parser.add_argument("--local-epochs", type=int, default=3)
    args = parser.parse_args()

    from devicetune.config import load_config, resolve_data_dir
    from devicetune.export.build import build
    from devicetune.fleet.simulate import simulate
    from devicetune.privacy.planning import noise_for_budget

    base = load_config(ROOT / "simulations" / "scale_10k.toml")
    base = base.model_copy(update={
        "server": base.server.model_copy(update={"initial_head": "fresh"}),
        "fleet": base.fleet.model_copy(update={"local_epochs": args.local_epochs})})
    data_dir = resolve_data_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-privacy-"))
    artifacts = work / "artifacts"
    build(base, artifacts, data_dir)
    rounds = base.server.rounds
    q = base.server.devices_per_round / base.fleet.devices

    runs = []
    for target in [None, *args.epsilons]:
        privacy = {"mode": "off"}
        if target is not None:
            noise = noise_for_budget(target, args.delta, rounds, q, "rdp")
            privacy = {"mode": "fixed", "noise_multiplier": noise,
                       "clip_norm": args.clip_norm, "delta": args.delta,
                       "max_epsilon": target, "accountant": "rdp"}
        config = base.model_copy(update={"privacy": base.privacy.model_validate(privacy)})
        name = "no DP" if target is None else f"epsilon {target:g}"
        result = simulate(config, work / name.replace(" ", "_"), data_dir,
                          engine="vectorized", artifacts=artifacts)
        summary = result.summary
        spent = summary.get("privacy") or {}
        runs.append({
            "run": name, "target_epsilon": target,
            "noise_multiplier": privacy.get("noise_multiplier"),
            "epsilon_rdp": spent.get("epsilon_rdp"), "epsilon_pld": spent.get("epsilon_pld"),
            "rounds_run": summary["rounds_run"],
            "global_accuracy": summary["global_accuracy_final"],
            "personalised_mean": summary["accuracy_personal"]["mean"],
        })

    print(f"\nscale_10k, head federated from scratch: {base.fleet.devices:,} devices, "
          f"{base.server.devices_per_round:,} per round (q = {q:g}), {rounds} rounds, "
          f"{args.local_epochs} local epochs, clip norm {args.clip_norm:g}, "
          f"delta {args.delta:g}\n")
    print(f"{'run':12} {'noise mult.':>11} {'eps (RDP)':>10} {'eps (PLD)':>10} "
          f"{'rounds':>7} {'global acc.':>12} {'personalised':>13}")
    for run in runs:
        noise = "-" if run["noise_multiplier"] is None else f"{run['noise_multiplier']:.3f}"
        rdp = "-" if run["epsilon_rdp"] is None else f"{run['epsilon_rdp']:.3f}"
        pld = "-" if run["epsilon_pld"] is None else f"{run['epsilon_pld']:.3f}"
        print(f"{run['run']:12} {noise:>11} {rdp:>10} {pld:>10} {run['rounds_run']:>7} "
              f"{100 * run['global_accuracy']:11.1f}% {100 * run['personalised_mean']:12.1f}%")
    print()
    print(json.dumps({"benchmark": "privacy_tradeoff", "runs": runs}))


if __name__ == "__main__":
    main()
