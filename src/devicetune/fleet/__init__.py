"""The fleet: population, device-side training, personalization, the simulation engines."""
