"""A tiny OpenAI-compatible judge server around a local causal LM (standard library only).

For tests of the ``http`` judge and for users without a served judge::

    gpo judge-serve --model smollm2 --port 8000        # then: judge http:base_url=http://127.0.0.1:8000/v1,model=gpo-judge

It answers ``POST /v1/chat/completions`` (and ``GET /v1/models``) on 127.0.0.1 with a real model:

- ``mode="choice"`` (default): the next-token probabilities of "A" and "B" after the request's
  conversation (chat template when the tokenizer has one) decide; the reply is the likelier
  letter. This is the ``local`` judge's scoring turned into a reply, so it always answers A or B.
- ``mode="generate"``: greedy decoding of up to ``max_tokens`` new tokens, capped at
  ``max_new_tokens`` (64; a larger request is cut to the cap).

With ``api_key_env`` set, requests must carry ``Authorization: Bearer <that variable's value>``
(read once, at start).
One request at a time reaches the model (a lock); the HTTP side is threaded, with at most
``max_threads`` (32) connections served at once (more are answered 503 at once, which the ``http``
judge retries) and a ``timeout`` (30 s) on every socket read and write, so a client that stops
sending or reading frees its thread.
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import torch

from gpo.eval.judge_local import choice_probabilities, encode_messages, label_token_ids
from gpo.eval.judges import LABELS

MAX_NEW_TOKENS = 64  # default cap on generated tokens per request (a judge answers in a few)
MAX_THREADS = 32  # default cap on connections served at once (one thread each)
TIMEOUT = 30.0  # default seconds a socket read or write may wait for the client
MAX_BODY = 1 << 20  # bytes: a judge question is a few kB
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class JudgeServer:
    """Serve ``model`` on ``host:port`` (port 0: a free one); ``base_url`` is the URL to use."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        mode: Literal["choice", "generate"] = "choice",
        host: str = "127.0.0.1",
        port: int = 0,
        api_key_env: str | None = None,
        served_model: str = "gpo-judge",
        max_new_tokens: int = MAX_NEW_TOKENS,
        max_threads: int = MAX_THREADS,
        timeout: float = TIMEOUT,
    ) -> None:
        if mode not in ("choice", "generate"):
            raise ValueError(f"judge server mode must be 'choice' or 'generate', got {mode!r}")
        _check_limits(max_new_tokens, max_threads, timeout)
        self.max_new_tokens, self.timeout = max_new_tokens, float(timeout)
        self.model, self.tokenizer, self.mode = model.eval(), tokenizer, mode
        self.served_model = served_model
        # Read once at start, so clients in the same process (tests) can change theirs.
        self._key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self._key:
            raise ValueError(f"the judge server should require ${api_key_env}, but it is unset")
        self.label_ids = label_token_ids(tokenizer, LABELS) if mode == "choice" else None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.httpd = _BoundedHTTPServer((host, port), _handler(self), max_threads)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def reply(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        """The assistant's reply text to a conversation."""
        ids = encode_messages(self.tokenizer, messages)
        pad = self.tokenizer.pad_token_id or 0
        with self._lock:
            if self.mode == "choice":
                p_a = choice_probabilities(self.model, [ids], self.label_ids, pad)[0]
                return LABELS[0] if p_a >= 0.5 else LABELS[1]
            with torch.no_grad():
                out = self.model.generate(
                    torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=max(1, min(max_tokens, self.max_new_tokens)),
                    do_sample=False,
                    pad_token_id=pad,
                )
        return self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip()

    def authorized(self, header: str | None) -> bool:
        if self._key is None:
            return True
        # Constant time: the comparison must not tell a guesser how many characters matched.
        return hmac.compare_digest((header or "").encode(), f"Bearer {self._key}".encode())

    def host_ok(self, header: str | None) -> bool:
        """On loopback, only requests addressed to it (a web page's DNS-rebinding attack sends
        its own host name in ``Host``)."""
        host, port = self.httpd.server_address[:2]
        if host not in LOOPBACK:
            return True
        return header in {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}

    def start(self) -> JudgeServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_limits(max_new_tokens: int, max_threads: int, timeout: float) -> None:
    for name, value in (("max_new_tokens", max_new_tokens), ("max_threads", max_threads)):
        if type(value) is not int or value < 1:
            raise ValueError(f"judge server {name} must be a positive integer, got {value!r}")
    if not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
        raise ValueError(
            f"judge server timeout must be a positive number of seconds, got {timeout!r}"
        )


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_threads`` at once. A connection beyond that is
    answered 503 on the accept thread and closed, so a flood of (slow) clients cannot start
    threads without bound; the ``http`` judge retries a 503 with backoff."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, max_threads: int) -> None:
        self.max_threads = max_threads
        self._slots = threading.BoundedSemaphore(max_threads)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request, self.max_threads)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self._slots.release()  # no thread started: nothing else will release its slot
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _refuse_busy(conn: socket.socket, max_threads: int) -> None:
    """A one-line 503 written straight to the socket (no thread for it)."""
    message = (
        f"the judge server is busy: all {max_threads} request threads are in use "
        "(raise --max-threads, or send fewer requests at once); retry later"
    )
    data = json.dumps({"error": {"message": message, "type": "server_busy"}}).encode()
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    deadline = time.monotonic() + 0.2  # short: this runs on the accept thread
    try:
        conn.settimeout(0.1)
        conn.sendall(head.encode() + data)
        conn.shutdown(socket.SHUT_WR)
        # Read what the client sent until it closes (briefly): closing with unread data would
        # reset the connection, and a reset can drop the 503 before the client reads it.
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if not conn.recv(1 << 16):
                break
    except OSError:
        pass


def _valid_messages(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
    )


def _content_length(header: str | None) -> int | tuple[int, str]:
    """The body size, or ``(status, message)`` when it must not be read: missing, not a
    non-negative integer (a negative one would block a thread), or over :data:`MAX_BODY`."""
    if header is None:
        return 411, "Content-Length is required"
    if not header.strip().isdigit():
        return 400, f"Content-Length must be a non-negative integer, got {header[:20]!r}"
    if int(header) > MAX_BODY:
        return 413, f"the body is over {MAX_BODY} bytes"
    return int(header)


def _handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Every socket read and write waits at most this long: a client that stops sending
        # (half a request, half a body) or stops reading frees its thread.
        timeout = server.timeout

        def log_message(self, format: str, *args: Any) -> None:  # quiet: no per-request lines
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str) -> None:
            self._send(status, {"error": {"message": message, "type": kind}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                return self._error(404, f"no route {self.path}", "not_found")
            self._send(
                200, {"object": "list", "data": [{"id": server.served_model, "object": "model"}]}
            )

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}", "not_found")
            if not server.host_ok(self.headers.get("Host")):
                return self._error(421, "unexpected Host header", "invalid_request_error")
            if not server.authorized(self.headers.get("Authorization")):
                return self._error(401, "invalid or missing API key", "invalid_api_key")
            size = _content_length(self.headers.get("Content-Length"))
            if isinstance(size, tuple):
                self.close_connection = True  # the body (if any) is not read
                return self._error(*size, "invalid_request_error")
            try:
                body = json.loads(self.rfile.read(size))
            except (ValueError, TypeError):
                return self._error(400, "the body is not JSON", "invalid_request_error")
            messages = body.get("messages") if isinstance(body, dict) else None
            if not _valid_messages(messages):
                return self._error(
                    400,
                    "messages must be a non-empty list of {role, content}",
                    "invalid_request_error",
                )
            max_tokens = body.get("max_tokens")
            max_tokens = 16 if max_tokens is None else max_tokens  # null: the default, as OpenAI
            if type(max_tokens) is not int or max_tokens < 1:
                return self._error(
                    400, "max_tokens must be a positive integer", "invalid_request_error"
                )
            text = server.reply(messages, max_tokens)
            self._send(
                200,
                {
                    "id": f"chatcmpl-{time.time_ns()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": server.served_model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )

    return Handler
