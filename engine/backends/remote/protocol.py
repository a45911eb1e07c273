"""The wire of the remote trainer: one JSON POST per port call, numbered per session so
the server runs them in the order they were submitted even when they arrive on
several connections at once (that is what lets a client pipeline).

``POST /session`` -> ``{"session": ID}``; ``POST /call`` with ``{"session", "seq",
"call", "args"}`` -> ``{"result": ...}`` or, on a failed call, status 400 and
``{"error": "one line"}``; ``GET /health`` -> ``{"ok": true, "version": N}``.
"""

from __future__ import annotations

#: The port's calls, as the wire names them.
CALLS = ("forward_backward", "optim_step", "save_weights", "load_weights")
