"""Hypothesis strategies, state machines and invariants of the ledger (importable).

- :mod:`properties.invariants`: named invariant functions; ``check_state`` and
  ``InvariantChecker`` plug into a shell's debug mode (``Ledger(check=...)``);
- :mod:`properties.liveness`: a full batch forms from any reachable state;
- :mod:`properties.reference`: a plain, mutable reference model with AReaL's
  StalenessManager semantics, for differential checks;
- :mod:`properties.stateful`: the Hypothesis state machines (``LedgerMachine``,
  ``machine_for(policy)``);
- :mod:`properties.strategies`: configs and helpers for Hypothesis;
- :mod:`properties.profiles`: the ``ci`` and ``thorough`` settings profiles.
"""
