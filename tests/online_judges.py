"""User judges importable as ``online_judges:NAME`` in tests (tests/ is on sys.path): the
pairwise protocol ``judge(prompts, first, second) -> list[float]``, P(first beats second)."""

#: (prompt, first, second) of every call to a recording judge, in order.
CALLS: list[tuple[str, str, str]] = []


def always_first(prompts, first, second):
    CALLS.extend(zip(prompts, first, second, strict=True))
    return [1.0] * len(prompts)


def always_second(prompts, first, second):
    CALLS.extend(zip(prompts, first, second, strict=True))
    return [0.0] * len(prompts)


def nan_judge(prompts, first, second):
    return [0.5] * (len(prompts) - 1) + [float("nan")]


def too_big(prompts, first, second):
    return [1.5] + [0.5] * (len(prompts) - 1)


def down_from_step_3(prompts, first, second):
    """Fails at its third call (one call per step at batch 4, no accumulation)."""
    CALLS.extend(zip(prompts, first, second, strict=True))
    if len(CALLS) > 2 * len(prompts):
        raise ConnectionError("judge server unreachable")
    return [0.5] * len(prompts)
