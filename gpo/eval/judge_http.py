"""An OpenAI-compatible chat-completions endpoint as a pairwise judge (see :mod:`gpo.eval.judges`).

Each judge question goes to ``POST {base_url}/chat/completions`` (temperature 0, a few tokens);
the first standalone "A" or "B" of the reply is the answer, and each pair is asked in both
orders. The API key is read from the environment variable named by ``api_key_env`` (default
``GPO_JUDGE_API_KEY``) at each request and sent as ``Authorization: Bearer``; it is never stored
on the judge, so it cannot leak into its repr, configs or logs, and it is masked out of errors.
Sending it over plain http to a host other than this machine warns once per base URL (anyone on
the way can read it). A reply body over ``max_reply_bytes`` (1 MiB) is an error, read no further.
Standard library only (urllib).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from tqdm.auto import tqdm

from gpo.eval.judges import Prompt, average_orders, both_orders, parse_choice
from gpo.io import redact_urls, size_text
from gpo.losses.numerics import warn_once

DEFAULT_KEY_ENV = "GPO_JUDGE_API_KEY"
#: The largest reply body read, in bytes: a chat completion naming A or B is well under 1 kB.
MAX_REPLY_BYTES = 1 << 20
#: How much of an error reply is read (only its first line is shown).
_ERROR_DETAIL_BYTES = 4096


class JudgeError(RuntimeError):
    """The judge endpoint could not be used; the one-line message says why."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would resend the Authorization header to wherever it
    points (another host, or plain http), and count that host's reply as a verdict."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirect)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class HTTPJudge:
    """Ask an OpenAI-compatible endpoint (``base_url`` like ``http://127.0.0.1:8000/v1``).

    Connection errors, timeouts, HTTP 429 and 5xx are retried ``retries`` times with exponential
    backoff (``backoff``, 2x, 4x... seconds); other HTTP errors fail at once. A reply naming
    neither A nor B is an error, or a tie with ``unparsed="tie"``.
    """

    base_url: str = ""
    model: str = ""
    api_key_env: str = DEFAULT_KEY_ENV
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    max_tokens: int = 4
    max_workers: int = 4
    max_reply_bytes: int = MAX_REPLY_BYTES  # a longer reply body is an error, not read on
    unparsed: Literal["error", "tie"] = "error"
    progress: bool = False  # a progress bar over the questions
    name: str = "http"

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                "the http judge needs base_url=http(s)://HOST[:PORT]/v1, "
                f"got {self.base_url or 'none'!r}"
            )
        if not self.model:
            raise ValueError("the http judge needs model=NAME (the served model's name)")
        if self.unparsed not in ("error", "tie"):
            raise ValueError(f"unparsed must be 'error' or 'tie', got {self.unparsed!r}")
        if self.retries < 0 or self.max_workers < 1:
            raise ValueError("retries must be >= 0 and max_workers >= 1")
        if type(self.max_reply_bytes) is not int or self.max_reply_bytes < 1:
            raise ValueError(
                f"max_reply_bytes must be a positive integer, got {self.max_reply_bytes!r}"
            )

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def _warn_plain_http(self, key: str | None) -> None:
        """Warn (once per base URL, per process) before a key goes unencrypted off this machine."""
        parts = urllib.parse.urlsplit(self.base_url)
        host = parts.hostname or ""
        if key and parts.scheme == "http" and not _is_loopback(host):
            warn_once(
                f"judge-plain-http:{redact_urls(self.base_url)}",
                f"the http judge sends the API key in ${self.api_key_env} over plain http to "
                f"{host}, not this machine: anyone on the network path can read it; use "
                f"https://{host} if the endpoint offers it",
            )

    def _read_reply(self, response: Any) -> bytes:
        # One byte past the cap tells "exactly the cap" from "over it" without reading on.
        raw = response.read(self.max_reply_bytes + 1)
        if len(raw) > self.max_reply_bytes:
            raise self._fail(
                f"the reply of the judge endpoint {self.url} is over "
                f"{size_text(self.max_reply_bytes)}, the most the http judge reads "
                "(max_reply_bytes); a chat completion naming A or B is far smaller"
            )
        return raw

    def _fail(self, message: str) -> JudgeError:
        key = self._key()
        message = redact_urls(_one_line(message, 400))  # no user:password@ of the URL either
        return JudgeError(message.replace(key, "***") if key else message)

    def _request(self, question: str) -> bytes:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._warn_plain_http(key)
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:
                    return self._read_reply(response)
            except urllib.error.HTTPError as e:
                detail = _one_line(e.read(_ERROR_DETAIL_BYTES).decode(errors="replace"))
                if 300 <= e.code < 400:
                    raise self._redirect_error(e.code, e.headers.get("Location")) from None
                if (e.code == 429 or e.code >= 500) and not last:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise self._http_error(e.code, detail, attempt + 1) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if not last:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                reason = getattr(e, "reason", e)
                raise self._fail(
                    f"cannot reach the judge endpoint {self.url}: {reason} "
                    f"(after {attempt + 1} attempts; is the server running?)"
                ) from None
        raise AssertionError("unreachable")

    def _redirect_error(self, code: int, location: str | None) -> JudgeError:
        return self._fail(
            f"judge endpoint {self.url} answered HTTP {code}, a redirect to "
            f"{location or 'nowhere'}: redirects are not followed (they would carry the API key "
            "to another address); set base_url to the endpoint itself"
        )

    def _http_error(self, code: int, detail: str, attempts: int) -> JudgeError:
        if code in (401, 403):
            hint = (
                f"the key in ${self.api_key_env} was refused"
                if self._key()
                else f"no API key was sent: set the environment variable {self.api_key_env}"
            )
            return self._fail(f"judge endpoint {self.url} answered HTTP {code}: {hint}")
        if code == 404:
            return self._fail(
                f"judge endpoint {self.url} answered HTTP 404 (base_url should end in /v1, "
                f"and model {self.model!r} must be served): {detail}"
            )
        return self._fail(
            f"judge endpoint {self.url} answered HTTP {code} after {attempts} attempts: {detail}"
        )

    def ask(self, question: str) -> float:
        """1.0 if the endpoint answers A, 0.0 for B (0.5 if unparsed and ``unparsed="tie"``)."""
        raw = self._request(question)
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = _one_line(raw.decode(errors="replace"), 120)
            raise self._fail(
                f"malformed reply from the judge endpoint {self.url}: expected JSON with "
                f"choices[0].message.content, got {snippet!r}"
            ) from None
        choice = parse_choice(content)
        if choice is None:
            if self.unparsed == "tie":
                return 0.5
            raise self._fail(
                f"the judge at {self.url} answered neither A nor B: {_one_line(content, 80)!r} "
                "(pass unparsed='tie' to count such replies as ties)"
            )
        return 1.0 if choice == "A" else 0.0

    def __call__(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> list[float]:
        questions = both_orders(prompts, first, second)
        self._warn_plain_http(self._key())  # here, before the worker threads ask at once
        bar = tqdm(total=len(questions), desc="judging", disable=not self.progress, leave=False)
        with ThreadPoolExecutor(self.max_workers) as pool:
            answers: list[Any] = []
            for answer in pool.map(self.ask, questions):
                answers.append(answer)
                bar.update(1)
        bar.close()
        return average_orders(answers)
