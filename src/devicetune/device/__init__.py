"""Runtimes that execute an exported artifact as a phone would."""
