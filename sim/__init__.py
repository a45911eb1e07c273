"""SimPy discrete-event simulator of an asynchronous RL cluster driven by the ledger."""
