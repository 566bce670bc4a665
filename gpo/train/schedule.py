"""Evaluation schedules: at which optimizer steps a run evaluates.

A schedule is a comma-separated list of ``EVERY:UNTIL`` segments, optionally ending in a bare
``EVERY`` that holds for the rest of training. ``"200:2000,2000"`` (the GPO paper's App. A.3)
evaluates every 200 steps up to step 2000, then every 2000 steps (4000, 6000, ...). Step counts
are absolute: a step ``s`` in a segment is an eval step when ``s % EVERY == 0``. The last step of
training is always evaluated. ``"15"`` is the same as ``eval_steps: 15``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    every: int
    until: int | None  # None: to the end of training


def parse_schedule(spec: str) -> list[Segment]:
    """Segments of ``spec`` (see the module docstring); a one-line ValueError if malformed."""
    segments: list[Segment] = []
    hint = "expected e.g. '200:2000,2000' (every 200 steps up to 2000, then every 2000)"
    items = [s.strip() for s in spec.split(",")]
    for k, item in enumerate(items):
        every_s, _, until_s = item.partition(":")
        try:
            every = int(every_s)
            until = int(until_s) if until_s else None
        except ValueError:
            raise ValueError(f"bad eval schedule {spec!r}: {hint}") from None
        if every <= 0 or (until is not None and until <= 0):
            raise ValueError(f"bad eval schedule {spec!r}: steps must be positive ({hint})")
        if until is None and k != len(items) - 1:
            raise ValueError(f"bad eval schedule {spec!r}: only the last segment may omit :UNTIL")
        if segments and until is not None and until <= (segments[-1].until or 0):
            raise ValueError(f"bad eval schedule {spec!r}: UNTIL values must increase")
        segments.append(Segment(every, until))
    return segments


def is_eval_step(step: int, max_steps: int, segments: list[Segment]) -> bool:
    """Whether ``step`` is evaluated under ``segments`` (the final step always is)."""
    if step == max_steps:
        return True
    for seg in segments:
        if seg.until is None or step <= seg.until:
            return step % seg.every == 0
    return False


def eval_steps_of(spec: str, max_steps: int) -> list[int]:
    """Every eval step of a run of ``max_steps`` steps (for printing and sweep estimates)."""
    segments = parse_schedule(spec)
    return [s for s in range(1, max_steps + 1) if is_eval_step(s, max_steps, segments)]


def segments_for(eval_schedule: str | None, eval_steps: int) -> list[Segment] | None:
    """A config's schedule: ``eval_schedule`` if set, else every ``eval_steps`` (0: never)."""
    if eval_schedule is not None:
        return parse_schedule(eval_schedule)
    return [Segment(eval_steps, None)] if eval_steps > 0 else None
