"""The federated server: round loop, strategies, update validation, persistence."""
