"""User-defined losses importable as ``user_losses:NAME`` in tests (tests/ is on sys.path)."""

import torch


def smooth_hinge(v: torch.Tensor) -> torch.Tensor:
    """softplus(1 - v): f'(0) = -sigmoid(1), f''(0) = sigmoid(1) sigmoid(-1)."""
    return torch.nn.functional.softplus(1.0 - v)


def increasing(v: torch.Tensor) -> torch.Tensor:
    return v


not_a_function = 42
