"""Judges for the soft-label tests, importable as ``soft_judges:NAME`` (tests/ is on sys.path):
the pairwise protocol ``judge(prompts, first, second) -> list[float]``, P(first beats second)."""

#: (prompt, first, second) of every call, in order.
CALLS: list[tuple[str, str, str]] = []


def three_tenths(prompts, first, second):
    """``second`` is the more likely winner, at 0.7."""
    CALLS.extend(zip(prompts, first, second, strict=True))
    return [0.3] * len(prompts)


def graded(prompts, first, second):
    """Scores that differ between pairs (and are not 0.5): 0.9, 0.2, 0.65, 0.4, ..."""
    return [(0.9, 0.2, 0.65, 0.4)[k % 4] for k in range(len(prompts))]
