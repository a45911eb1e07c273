"""``python -m engine.cli``: the ``rollout-ledger`` command."""

import sys

from engine.cli import main

if __name__ == "__main__":  # a process spawned by an engine (vLLM) imports this module again
    sys.exit(main())
