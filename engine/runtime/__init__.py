"""The runtime: the asyncio executor with AReaL's verbs, the trajectory store, the
garbage-collection schedule, and the ports a model backend implements (no backend imported)."""
