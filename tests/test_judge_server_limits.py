"""``gpo judge-serve``'s limits, with a real tiny model behind a real socket: a client that stops
sending is disconnected after ``timeout``, at most ``max_threads`` connections are served at once
(a 503 beyond), and a request's ``max_tokens`` is cut to ``max_new_tokens``; the CLI flags
(``--timeout``, ``--max-threads``, ``--max-new-tokens-cap``) reach the server."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any

import pytest

from gpo.eval.judge_http import HTTPJudge, JudgeError
from gpo.eval.judge_server import JudgeServer
from gpo.models.tiny import DEFAULT_WORDS, tiny_model_and_tokenizer


@pytest.fixture(scope="module")
def ab_model() -> tuple[Any, Any]:
    return tiny_model_and_tokenizer(vocab_words=(*DEFAULT_WORDS, "A", "B"), seed=0)


def _post(port: int, max_tokens: int | None = None) -> tuple[int, dict[str, str], str]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "A or B?"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body))
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read().decode()
    finally:
        conn.close()


def test_a_client_that_stops_sending_is_disconnected_after_the_timeout(ab_model) -> None:
    """Each used to hold a server thread for as long as it kept the connection open."""
    model, tok = ab_model
    with JudgeServer(model, tok, timeout=0.5) as server:
        port = server.httpd.server_address[1]
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Length: 100\r\n\r\n"
        )
        # nothing at all; half the request line; the headers and 4 of 100 body bytes
        for sent in (b"", b"POST /v1/chat", head.encode() + b'{"mo'):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(sent)
                start = time.monotonic()
                assert client.recv(1024) == b"", sent  # closed by the server, no reply
                assert time.monotonic() - start < 5, sent
        assert _post(port)[0] == 200  # and the server still serves


def test_connections_beyond_max_threads_are_answered_503(ab_model) -> None:
    """Threads used to be started without bound, one per connection."""
    model, tok = ab_model
    with JudgeServer(model, tok, max_threads=2) as server:
        port = server.httpd.server_address[1]
        # two silent connections hold both threads (accepted in order, before the next)
        holders = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        try:
            status, headers, text = _post(port)
            assert (status, headers.get("Retry-After")) == (503, "1")
            assert json.loads(text)["error"] == {
                "message": "the judge server is busy: all 2 request threads are in use (raise "
                "--max-threads, or send fewer requests at once); retry later",
                "type": "server_busy",
            }
            judge = HTTPJudge(base_url=server.base_url, model="gpo-judge", retries=0)
            with pytest.raises(JudgeError, match=r"HTTP 503 after 1 attempts: .*server is busy"):
                judge.ask("A or B?")
        finally:
            for holder in holders:
                holder.close()
        # the holders' threads end on their end of file and give their slots back
        deadline = time.monotonic() + 10
        while (status := _post(port)[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200


def test_max_tokens_is_cut_to_max_new_tokens(ab_model, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = ab_model
    asked: list[int] = []
    generate = model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs["max_new_tokens"])
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    with JudgeServer(model, tok, mode="generate", max_new_tokens=3) as server:
        port = server.httpd.server_address[1]
        assert [_post(port, n)[0] for n in (1, 3, 50, None)] == [200] * 4
    assert asked == [1, 3, 3, 3]  # None: the default 16, cut to 3 too


def test_limits_must_be_positive(ab_model) -> None:
    model, tok = ab_model
    for kwargs, message in (
        ({"max_threads": 0}, "judge server max_threads must be a positive integer, got 0"),
        ({"max_new_tokens": 2.5}, "judge server max_new_tokens must be a positive integer"),
        ({"timeout": 0}, "judge server timeout must be a positive number of seconds, got 0"),
    ):
        with pytest.raises(ValueError, match=message):
            JudgeServer(model, tok, **kwargs)


def test_judge_serve_flags_reach_the_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpo.cli import build_parser, main
    from gpo.eval import judge_server
    from gpo.models import loading

    args = build_parser().parse_args(["judge-serve"])  # the CLI's defaults are the server's
    assert (args.max_new_tokens_cap, args.max_threads, args.timeout) == (
        judge_server.MAX_NEW_TOKENS,
        judge_server.MAX_THREADS,
        judge_server.TIMEOUT,
    )
    seen: dict[str, Any] = {}

    class Server:
        base_url = "http://127.0.0.1:1/v1"

        def __init__(self, model: Any, tokenizer: Any, mode: str, **kwargs: Any) -> None:
            seen.update(kwargs)
            self.httpd = self

        def serve_forever(self) -> None:
            raise KeyboardInterrupt  # Ctrl-C at once

        def close(self) -> None:
            seen["closed"] = True

    monkeypatch.setattr(judge_server, "JudgeServer", Server)
    monkeypatch.setattr(loading, "load_model_and_tokenizer", lambda name, dtype: (None, None))
    flags = ["--max-new-tokens-cap", "8", "--max-threads", "4", "--timeout", "2.5"]
    assert main(["judge-serve", "--port", "0", *flags]) == 0
    assert (seen["max_new_tokens"], seen["max_threads"], seen["timeout"]) == (8, 4, 2.5)
    assert seen["closed"]
    for flag, bad in (("--max-threads", "0"), ("--timeout", "-1"), ("--max-new-tokens-cap", "x")):
        with pytest.raises(SystemExit):
            main(["judge-serve", flag, bad])
        assert f"argument {flag}: expected a positive" in capsys.readouterr().err
