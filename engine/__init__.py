"""rollout-ledger's engine: the pure ledger core and the shells that drive it.

The core (``events``, ``config``, ``reducer``, ``policies``) is pure: no clock,
no randomness, no I/O.  Shells (``log``, ``ledger``, ``cli``, the executor and the
torch backend) own those.
"""

from engine.core.config import Config, ConfigError
from engine.core.events import SCHEMA_VERSION, Event, EventError, from_json, to_json
from engine.core.reducer import (
    EMPTY,
    Folder,
    IllegalTransition,
    State,
    apply,
    capacity,
    fold,
)

__all__ = [
    "Config",
    "ConfigError",
    "EMPTY",
    "Event",
    "EventError",
    "Folder",
    "IllegalTransition",
    "SCHEMA_VERSION",
    "State",
    "apply",
    "capacity",
    "fold",
    "from_json",
    "to_json",
]
