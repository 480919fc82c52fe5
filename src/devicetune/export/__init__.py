"""Exporting artifacts: TFLite, Core ML, parity checks, the build."""
