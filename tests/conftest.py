import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees the warn-once warnings afresh."""
    from gpo._numerics import reset_warnings

    reset_warnings()
    yield
