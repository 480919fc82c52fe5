"""Differential privacy: DP-FedAvg, accounting, the ledger and the budget gate."""
