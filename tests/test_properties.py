"""The property suite: state machines over every policy, checked at every event."""

from __future__ import annotations

import properties.profiles  # noqa: F401  (registers and loads the Hypothesis profile)
from properties.stateful import LedgerMachine, machine_for

TestAdmission = machine_for("admission").TestCase
TestStrict = machine_for("strict").TestCase
TestSegmentWise = machine_for("segment_wise").TestCase
TestAnyPolicy = LedgerMachine.TestCase
