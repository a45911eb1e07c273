"""Hypothesis strategies, state machines and invariants of the ledger (importable)."""
