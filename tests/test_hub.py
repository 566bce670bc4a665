"""The Hub probe (gpo.data.hub): an unreachable Hub fails in seconds with one line saying what to
set, for models and datasets alike, instead of ~50 s of retries. No network: the "Hub" here is a
closed port on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from gpo.cli import main
from gpo.data import hub
from gpo.data.formats import DataError
from gpo.data.hub import HubUnreachable, check_hub_reachable, hub_offline
from gpo.data.sources import load_rows


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: connecting is refused at once


@pytest.fixture
def dead_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """Online mode (no HF_*_OFFLINE), with the Hub endpoint on a closed local port."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


def test_probe_of_a_closed_port_fails_fast_with_what_to_do(dead_hub: str) -> None:
    start = time.monotonic()
    with pytest.raises(HubUnreachable) as err:
        check_hub_reachable("model 'org/name'")
    assert time.monotonic() - start < 3
    assert str(err.value) == (
        f"cannot load model 'org/name': the Hugging Face Hub ({dead_hub}) is unreachable "
        "(Connection refused); pass a local path, or set HF_HUB_OFFLINE=1 to use only what is "
        "already cached"
    )


def test_probe_passes_when_something_listens(dead_hub: str) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        check_hub_reachable("x", endpoint=f"http://127.0.0.1:{server.getsockname()[1]}")


def test_probe_timeout_is_named(dead_hub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(address: tuple[str, int], timeout: float) -> None:
        assert timeout == 3.0
        raise TimeoutError("timed out")

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    with pytest.raises(HubUnreachable, match=r"is unreachable \(timed out\)"):
        check_hub_reachable("dataset 'org/data'")


def test_probe_goes_to_the_proxy_when_one_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    seen = []
    monkeypatch.setattr(hub.socket, "create_connection", lambda a, timeout: seen.append(a))
    with pytest.raises(TypeError):  # the stub returns no socket to close
        check_hub_reachable("x", endpoint="https://huggingface.co")
    assert seen == [("proxy.example", 3128)]


@pytest.mark.parametrize("value", ["1", "true", "ON", "yes"])
def test_offline_flags(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline() and not hub_offline("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", value)
    assert hub_offline("HF_DATASETS_OFFLINE")


def test_dataset_hub_name_fails_fast(dead_hub: str) -> None:
    start = time.monotonic()
    with pytest.raises(DataError, match="cannot load dataset 'org/data': the Hugging Face Hub"):
        load_rows("org/data")
    assert time.monotonic() - start < 3


def test_offline_mode_skips_the_probe(monkeypatch: pytest.MonkeyPatch, dead_hub: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def no_probe(*args: object, **kw: object) -> None:
        raise AssertionError("probed the Hub in offline mode")

    monkeypatch.setattr(hub.socket, "create_connection", no_probe)
    with pytest.raises(DataError, match="The Hub is switched off here"):
        load_rows("org/data")


def test_model_hub_name_fails_fast(dead_hub: str) -> None:
    from gpo.models.loading import load_model_and_tokenizer

    with pytest.raises(HubUnreachable, match="cannot load model 'org/model': the Hugging Face"):
        load_model_and_tokenizer("org/model")


def test_cli_model_and_data_hub_names_fail_fast(
    dead_hub: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "a", "chosen": " b", "rejected": " c"}) + "\n")
    runs = {
        "model": ["train", "--model", "org/model", "--data", str(data), "--out", str(tmp_path)],
        "dataset": ["data", "check", "org/data"],
        "check's model": ["data", "check", str(data), "--model", "org/model"],
    }
    for what, argv in runs.items():
        start = time.monotonic()
        assert main(argv) == 2, what
        line = capsys.readouterr().err.strip()
        assert time.monotonic() - start < 5, what
        assert line.startswith("gpo: error: cannot load "), line
        assert "unreachable" in line and "HF_HUB_OFFLINE=1" in line and "\n" not in line
