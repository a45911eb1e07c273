"""The pure core: events, the transition table and its guards, the capacity rule, the
staleness policies and the protocol of multi-event steps.

Nothing here reads a clock, draws a random number, does I/O or mutates its inputs,
and nothing here imports a shell (the log, the ledger, the runtime, a backend), torch,
simpy or structlog: ``.importlinter`` checks it in CI.
"""
