"""The property suite: state machines over every policy, checked at every event."""

from __future__ import annotations

import pytest

import properties.profiles  # noqa: F401  (registers and loads the Hypothesis profile)
from properties.stateful import LedgerMachine, machine_for

TestAdmission = machine_for("admission").TestCase
TestStrict = machine_for("strict").TestCase
TestSegmentWise = machine_for("segment_wise").TestCase
TestAnyPolicy = LedgerMachine.TestCase


def test_a_machine_for_an_unknown_policy_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="got 'lenient'"):
        machine_for("lenient")


def test_an_unknown_hypothesis_profile_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "fast")
    with pytest.raises(ValueError, match="got 'fast'"):
        properties.profiles.load_profile()
