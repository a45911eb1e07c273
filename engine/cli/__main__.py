"""``python -m engine.cli``: the ``rollout-ledger`` command."""

import sys

from engine.cli import main

sys.exit(main())
