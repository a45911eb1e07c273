"""A :class:`~engine.runtime.ports.TrainingClient` served over HTTP on loopback
(``rollout-ledger serve-trainer``) and the client that drives it (needs ``[remote]``)."""
