"""Analyses of an event log (simulated or real) that need only its timestamps.

:func:`little` measures the three sides of Little's law, L = lambda * W, for the
generation stage (from ``submitted`` until ``accepted``, ``filtered`` or
``rejected``): the time-averaged number in flight, the departure rate and the mean
time in flight.  On any log whose events carry ``t`` they must agree, which makes
it a check of the simulator's clock and bookkeeping against mathematics.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from engine.core.events import Accepted, Event, Filtered, Rejected, Submitted


class LittleLaw(NamedTuple):
    """Little's law measured on a log over ``[start, end]``."""

    mean_in_flight: float  # L: time-averaged rollouts in flight
    throughput: float  # lambda: departures from generation per second
    mean_latency: float  # W: mean seconds from submission to departure
    departures: int
    start: float
    end: float

    @property
    def relative_error(self) -> float:
        """``|L - lambda W| / L``."""
        return abs(self.mean_in_flight - self.throughput * self.mean_latency) / self.mean_in_flight


def little(events: Iterable[Event]) -> LittleLaw:
    """Measure L, lambda and W of the generation stage; every event must carry ``t``."""
    started: dict[str, float] = {}
    area = 0.0
    in_flight = 0
    start: float | None = None
    last = 0.0
    departures = 0
    latency_sum = 0.0
    for number, event in enumerate(events, start=1):
        t = event.t
        if t is None:
            raise ValueError(f"event {number} ({event.type}) has no time stamp 't'")
        if start is None:
            start = last = t
        area += in_flight * (t - last)
        last = t
        if isinstance(event, Submitted):
            started[event.rollout] = t
            in_flight += 1
        elif isinstance(event, (Accepted, Filtered, Rejected)):
            submitted = started.pop(event.rollout, None)
            if submitted is not None:  # a filtered ready rollout already left generation
                in_flight -= 1
                departures += 1
                latency_sum += t - submitted
    if start is None or last <= start or departures == 0:
        raise ValueError("the log has no completed generation over a positive time span")
    span = last - start
    return LittleLaw(area / span, departures / span, latency_sum / departures, departures, start, last)
