"""Pluggable judges: gold, local HF model (order-swapped), OpenAI-compatible HTTP endpoint."""

import io
import json
import socket
import threading
import urllib.error
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch import nn

from gpo.eval.judge_http import HTTPJudge, JudgeError
from gpo.eval.judge_local import LocalJudge
from gpo.eval.judge_server import JudgeServer
from gpo.eval.judges import (
    JUDGES,
    GoldJudge,
    both_orders,
    judge_question,
    parse_choice,
    resolve_judge,
)
from gpo.eval.win_rate import win_rate
from gpo.gold.reward import gold_probability
from gpo.models.tiny import DEFAULT_WORDS, tiny_model_and_tokenizer

PROMPT = "Write one sentence about a cat."
GOOD = "My cat likes to sleep in the warm sun all afternoon long."  # on topic, 12 words, ends
BAD = "dog dog dog"
KEY_ENV = "GPO_TEST_JUDGE_KEY"
SECRET = "sk-test-secret-1234567890"

PROMPTS = ["write a sentence about a cat", "tell me a fact", "hello"]
FIRST = ["the cat is happy .", "no", "good dog"]
SECOND = ["bad", "a long answer about the sea and the sky .", "good dog ."]


@pytest.fixture(scope="module")
def ab_model():
    """A real tiny Llama whose word-level vocabulary has the answer tokens A and B."""
    return tiny_model_and_tokenizer(vocab_words=(*DEFAULT_WORDS, "A", "B"), seed=0)


class BiasedLM(nn.Module):
    """Wraps a real model and adds a large bonus to one token: a judge that always answers it."""

    def __init__(self, inner: nn.Module, token_id: int, bonus: float = 20.0) -> None:
        super().__init__()
        self.inner, self.token_id, self.bonus = inner, token_id, bonus
        self.rows_seen = 0

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[..., self.token_id] += self.bonus
        self.rows_seen += out.logits.shape[0]
        return out


# --- gold ------------------------------------------------------------------------------------


def test_gold_judge_known_pairs():
    judge = resolve_judge("gold")
    assert judge.name == "gold"
    assert judge([PROMPT] * 3, [GOOD, BAD, GOOD], [BAD, GOOD, GOOD]) == [1.0, 0.0, 0.5]
    bt = resolve_judge("gold:mode=bt")
    p, q = bt([PROMPT, PROMPT], [GOOD, BAD], [BAD, GOOD])
    assert p == pytest.approx(gold_probability(PROMPT, GOOD, BAD)) and p > 0.9
    assert p + q == pytest.approx(1.0)
    mean, se = win_rate(judge, [PROMPT] * 4, [GOOD, GOOD, BAD, GOOD], [BAD, BAD, GOOD, GOOD])
    assert mean == pytest.approx(2.5 / 4)
    assert se == pytest.approx(0.4787135538781691 / 2)  # std(ddof=1) of 1,1,0,0.5 over sqrt(4)


def test_resolve_judge_errors_list_valid_names():
    assert list(JUDGES) == ["gold", "local", "http", "vader"]
    with pytest.raises(
        ValueError, match="unknown judge 'oracle'; valid judges: gold, local, http, vader"
    ):
        resolve_judge("oracle")
    with pytest.raises(ValueError, match="no option 'temperature'; its options: mode"):
        resolve_judge("gold", temperature=1.0)
    with pytest.raises(ValueError, match="not key=value"):
        resolve_judge("gold:bt")
    with pytest.raises(ValueError, match="needs base_url"):
        resolve_judge("http", model="m")
    with pytest.raises(ValueError, match="mode must be"):
        GoldJudge(mode="sampled")


def test_win_rate_checks_lengths_and_range():
    class Broken:
        name = "broken"

        def __call__(self, prompts, first, second):
            return [1.5] * len(prompts)

    with pytest.raises(ValueError, match="differ in length"):
        win_rate(resolve_judge("gold"), [PROMPT], [GOOD, BAD], [BAD])
    with pytest.raises(ValueError, match="outside"):
        win_rate(Broken(), [PROMPT], [GOOD], [BAD])


def test_parse_choice():
    assert parse_choice("B") == "B"
    assert parse_choice("Answer: A.") == "A"
    assert parse_choice("a long answer") is None  # lower-case 'a' is a word, not the answer
    assert parse_choice("") is None


# --- local ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bias_token", ["A", "B"])
def test_local_judge_swap_cancels_position_bias(ab_model, bias_token):
    model, tok = ab_model
    biased = BiasedLM(model, tok.convert_tokens_to_ids(bias_token))
    judge = LocalJudge(biased, tok, batch_size=2)
    # the model answers bias_token whatever the order (so without the swap: all 1 or all 0) ...
    p_a = judge.prob_first_label(both_orders(PROMPTS, FIRST, SECOND))
    assert all((p > 0.99) if bias_token == "A" else (p < 0.01) for p in p_a)
    # ... and each pair was judged in both orders, which cancels the bias
    biased.rows_seen = 0
    scores = judge(PROMPTS, FIRST, SECOND)
    assert biased.rows_seen == 2 * len(PROMPTS)
    assert scores == pytest.approx([0.5] * 3, abs=1e-3)


def test_local_judge_combines_orders(ab_model, monkeypatch):
    """P(A) with first as A and P(B) with first as B are averaged, for the right response."""
    model, tok = ab_model
    judge = LocalJudge(model, tok)
    seen = []

    def content_judge(questions):  # prefers the response starting with "good", 80%
        seen.extend(questions)
        return [0.8 if "Response A:\ngood" in q else 0.2 for q in questions]

    monkeypatch.setattr(judge, "prob_first_label", content_judge)
    assert judge([PROMPT, PROMPT], ["good one", "bad one"], ["bad one", "good one"]) == (
        pytest.approx([0.8, 0.2])
    )
    assert "Response A:\ngood one" in seen[0] and "Response B:\ngood one" in seen[2]


@pytest.fixture(scope="module")
def decisive_model():
    """``ab_model``'s twin with its output layer scaled 100x, so each question's P(A) is far from
    1/2 (0.84 to 0.98 here; the random model's own are within 1e-4 of it) and a wrong
    probability, a wrong pairing of the orders or a missing swap changes the scores visibly."""
    model, tok = tiny_model_and_tokenizer(vocab_words=(*DEFAULT_WORDS, "A", "B"), seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
    return model, tok


def _reference_p_a(model, tok, question: str, chat: bool) -> float:
    """P(A) computed directly: one unpadded row, sigmoid(logit A - logit B) at its last token."""
    if chat:
        messages = [{"role": "user", "content": question}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tok(question + "\nAnswer:")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    a, b = tok.convert_tokens_to_ids(["A", "B"])
    return torch.sigmoid(logits[a] - logits[b]).item()


@pytest.mark.parametrize("chat", [True, False])
def test_local_judge_real_model_exact_probabilities(decisive_model, chat):
    """The judge's P(A) is the model's, and each score is (P(A | x first) + P(B | y first)) / 2."""
    model, tok = decisive_model
    judge = LocalJudge(model, tok, batch_size=4, chat_template=None if chat else False)
    triples = list(zip(PROMPTS, FIRST, SECOND, strict=True))
    x_first = [_reference_p_a(model, tok, judge_question(p, x, y), chat) for p, x, y in triples]
    y_first = [_reference_p_a(model, tok, judge_question(p, y, x), chat) for p, x, y in triples]
    assert all(abs(p - 0.5) > 0.3 for p in x_first + y_first)  # informative: far from 1/2
    p_a = judge.prob_first_label(both_orders(PROMPTS, FIRST, SECOND))
    assert p_a == pytest.approx(x_first + y_first, abs=1e-5)
    expected = [0.5 * (u + 1.0 - v) for u, v in zip(x_first, y_first, strict=True)]
    assert judge(PROMPTS, FIRST, SECOND) == pytest.approx(expected, abs=1e-5)


def test_local_judge_real_model_symmetric_and_batch_invariant(decisive_model):
    model, tok = decisive_model
    judge = LocalJudge(model, tok, batch_size=4)
    s = judge(PROMPTS, FIRST, SECOND)
    # the order swap makes the judge antisymmetric: score(x, y) + score(y, x) = 1
    assert [a + b for a, b in zip(s, judge(PROMPTS, SECOND, FIRST), strict=True)] == (
        pytest.approx([1.0] * 3, abs=1e-6)
    )
    # right padding, logits at each row's last token: the batch size changes nothing
    assert LocalJudge(model, tok, batch_size=1)(PROMPTS, FIRST, SECOND) == pytest.approx(
        s, abs=1e-5
    )
    # without the chat template the model reads other tokens, so other scores
    plain = LocalJudge(model, tok, chat_template=False)(PROMPTS, FIRST, SECOND)
    assert all(abs(a - b) > 1e-4 for a, b in zip(plain, s, strict=True))


def test_local_judge_loads_from_path_and_needs_answer_tokens(tiny_model_dir):
    with pytest.raises(ValueError, match="no single token for the answer 'A'"):
        resolve_judge(f"local:model={tiny_model_dir}")  # default tiny vocab lacks "A"


# --- http, against a real local server ---------------------------------------------------------


def test_http_judge_round_trip_with_key(ab_model, monkeypatch):
    model, tok = ab_model
    monkeypatch.setenv(KEY_ENV, SECRET)
    local = LocalJudge(model, tok)
    p_a = local.prob_first_label(both_orders(PROMPTS, FIRST, SECOND))
    n = len(PROMPTS)
    expected = [0.5 * ((p_a[i] >= 0.5) + 1 - (p_a[n + i] >= 0.5)) for i in range(n)]
    with JudgeServer(model, tok, api_key_env=KEY_ENV) as server:
        judge = resolve_judge(
            "http", base_url=server.base_url, model="gpo-judge", api_key_env=KEY_ENV
        )
        assert judge(PROMPTS, FIRST, SECOND) == expected  # the server's real model decided
        # the server demands the key: the judge sent it in the Authorization header
        monkeypatch.setenv(KEY_ENV, "sk-wrong")
        with pytest.raises(JudgeError, match=rf"HTTP 401: the key in \${KEY_ENV} was refused"):
            judge(PROMPTS, FIRST, SECOND)
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(JudgeError, match=f"no API key was sent: set .*{KEY_ENV}"):
            judge(PROMPTS, FIRST, SECOND)
    for text in (repr(judge), str(judge), json.dumps(vars(judge))):
        assert SECRET not in text


def test_http_judge_swap_cancels_position_bias_of_served_model(ab_model):
    model, tok = ab_model
    biased = BiasedLM(model, tok.convert_tokens_to_ids("B"))
    with JudgeServer(biased, tok) as server:
        judge = HTTPJudge(base_url=server.base_url, model="gpo-judge")
        assert judge.ask(both_orders(PROMPTS, FIRST, SECOND)[0]) == 0.0  # says B: unswapped 0
        assert judge(PROMPTS, FIRST, SECOND) == [0.5, 0.5, 0.5]


def test_http_judge_reply_without_answer(tiny_model_dir):
    """A served model that generates words but never A or B (the default tiny vocabulary)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with JudgeServer(model, tok, mode="generate") as server:
        judge = HTTPJudge(base_url=server.base_url, model="gpo-judge")
        with pytest.raises(JudgeError, match="answered neither A nor B"):
            judge([PROMPT], [GOOD], [BAD])
        tie = HTTPJudge(base_url=server.base_url, model="gpo-judge", unparsed="tie")
        assert tie([PROMPT], [GOOD], [BAD]) == [0.5]


class _Canned:
    """A stdlib server answering every POST with a fixed status and body (for failure modes)."""

    def __init__(
        self, status: int, body: str, echo_auth: bool = False, headers: dict | None = None
    ) -> None:
        self.requests = 0
        self.auth: list[str | None] = []  # the Authorization header of each request
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                canned.requests += 1
                canned.auth.append(self.headers.get("Authorization"))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                text = body + (self.headers.get("Authorization", "") if echo_auth else "")
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            do_GET = do_POST  # a followed 302/303 arrives as a GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_judge_malformed_reply():
    with _Canned(200, "<html>not json</html>") as server:
        judge = HTTPJudge(base_url=server.url, model="m")
        with pytest.raises(JudgeError, match=r"malformed reply .* choices\[0\]\.message\.content"):
            judge([PROMPT], [GOOD], [BAD])
    with (
        _Canned(200, json.dumps({"choices": []})) as server,
        pytest.raises(JudgeError, match="malformed reply"),
    ):
        HTTPJudge(base_url=server.url, model="m")([PROMPT], [GOOD], [BAD])


def test_http_judge_retries_5xx_and_masks_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with _Canned(503, "overloaded, you sent ", echo_auth=True) as server:
        judge = HTTPJudge(
            base_url=server.url, model="m", api_key_env=KEY_ENV, retries=2, backoff=0.01
        )
        with pytest.raises(JudgeError) as info:
            judge.ask("Which is better, A or B?")
        assert server.requests == 3  # 1 + 2 retries
    message = str(info.value)
    assert "HTTP 503 after 3 attempts" in message and "Bearer ***" in message
    assert SECRET not in message and "\n" not in message


def test_http_judge_unreachable_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = HTTPJudge(base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=1, backoff=0.01)
    with pytest.raises(
        JudgeError, match=f"cannot reach the judge endpoint .*:{port}/v1.*2 attempts"
    ):
        judge([PROMPT], [GOOD], [BAD])


def test_judge_serve_cli_parser():
    from gpo.cli import build_parser

    args = build_parser().parse_args(["judge-serve", "--model", "m", "--port", "0"])
    assert (args.model, args.port, args.mode) == ("m", 0, "choice")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_http_judge_refuses_redirects_and_never_resends_the_key(monkeypatch, status):
    """A redirect would carry the Authorization header to another host (or to plain http) and
    count that host's reply as a verdict: it is refused, and the other host sees nothing."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    verdict = json.dumps({"choices": [{"message": {"content": "A"}}]})
    with _Canned(200, verdict) as elsewhere:
        target = elsewhere.url + "/chat/completions"
        with _Canned(status, "", headers={"Location": target}) as server:
            judge = HTTPJudge(base_url=server.url, model="m", api_key_env=KEY_ENV, retries=0)
            with pytest.raises(JudgeError) as info:
                judge.ask("Which is better, A or B?")
    assert elsewhere.requests == 0
    message = str(info.value)
    assert f"answered HTTP {status}, a redirect to {target}" in message
    assert "redirects are not followed" in message and SECRET not in message


def test_http_judge_errors_mask_credentials_in_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://bob:hunter2@127.0.0.1:{port}/v1?api_key=sk-in-url"
    judge = HTTPJudge(base_url=url, model="m", retries=0)
    with pytest.raises(JudgeError) as info:
        judge.ask("A or B?")
    message = str(info.value)
    assert f"http://***@127.0.0.1:{port}/v1?api_key=***" in message
    assert "hunter2" not in message and "sk-in-url" not in message


def test_http_judge_caps_the_reply_body():
    """A reply body over max_reply_bytes (1 MiB) is a one-line error naming the limit, read no
    further than one byte past it; it used to be read whole, whatever its size."""
    big = json.dumps({"choices": [{"message": {"content": "A"}}], "pad": "x" * (2 << 20)})
    with _Canned(200, big) as server:
        with pytest.raises(JudgeError) as info:
            HTTPJudge(base_url=server.url, model="m", retries=0).ask("A or B?")
        raised = HTTPJudge(base_url=server.url, model="m", retries=0, max_reply_bytes=3 << 20)
        assert raised.ask("A or B?") == 1.0  # the same reply under a raised cap
    assert str(info.value) == (
        f"the reply of the judge endpoint {server.url}/chat/completions is over 1 MiB, the most "
        "the http judge reads (max_reply_bytes); a chat completion naming A or B is far smaller"
    )
    with pytest.raises(ValueError, match="max_reply_bytes must be a positive integer, got 0"):
        HTTPJudge(base_url=server.url, model="m", max_reply_bytes=0)


def test_http_judge_reads_only_the_start_of_an_error_reply(monkeypatch):
    from gpo.eval import judge_http

    read = []

    class Body(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            data = super().read(n)
            read.append(len(data))
            return data

    def refuse(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 400, "Bad Request", {}, Body(b"x" * 8**8))

    monkeypatch.setattr(judge_http._OPENER, "open", refuse)
    with pytest.raises(JudgeError, match=r"HTTP 400 after 1 attempts: x+\.\.\.$"):
        HTTPJudge(base_url="http://127.0.0.1:9/v1", model="m", retries=0).ask("A or B?")
    assert 0 < sum(read) <= 64 << 10  # of 16 MiB


class _Reply:
    """A canned urllib response (``with ... as r: r.read(n)``)."""

    def __init__(self, data: bytes) -> None:
        self._body = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_http_judge_warns_once_before_sending_a_key_over_plain_http(monkeypatch):
    """A Bearer key over plain http to another host can be read on the way: one warning per base
    URL names the host and suggests https; https, loopback and keyless requests are quiet."""
    from gpo.eval import judge_http

    sent = []

    def answer(request, timeout):
        sent.append(request.get_header("Authorization"))
        return _Reply(json.dumps({"choices": [{"message": {"content": "A"}}]}).encode())

    monkeypatch.setattr(judge_http._OPENER, "open", answer)
    monkeypatch.setenv(KEY_ENV, SECRET)

    def plain_http_warnings(*urls: str) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for url in urls:
                judge = HTTPJudge(base_url=url, model="m", api_key_env=KEY_ENV)
                judge(PROMPTS, FIRST, SECOND)
                judge.ask("A or B?")
        return [str(w.message) for w in caught if "plain http" in str(w.message)]

    remote = "http://judge.example:8000/v1"
    assert plain_http_warnings(remote, remote, "http://10.1.2.3/v1") == [
        f"the http judge sends the API key in ${KEY_ENV} over plain http to {host}, not this "
        f"machine: anyone on the network path can read it; use https://{host} if the endpoint "
        "offers it"
        for host in ("judge.example", "10.1.2.3")
    ]
    assert sent == [f"Bearer {SECRET}"] * 21  # warned, still sent (the user's choice)
    quiet = ["https://judge.example/v1", "http://127.0.0.1:8000/v1", "http://localhost:8000/v1"]
    assert plain_http_warnings(*quiet, "http://[::1]:8000/v1", "http://127.0.0.2/v1") == []
    monkeypatch.delenv(KEY_ENV)
    assert plain_http_warnings("http://judge.other/v1") == []  # no key, nothing to read


def test_judge_server_validates_requests(ab_model, monkeypatch):
    """Content-Length (missing, negative, huge), max_tokens, Host, and the key compared in
    constant time: each a 4xx answer, never a blocked thread or a MemoryError."""
    import http.client
    import inspect

    from gpo.eval import judge_server

    monkeypatch.setenv(KEY_ENV, SECRET)
    model, tok = ab_model
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "A or B?"}]})
    auth = {"Authorization": f"Bearer {SECRET}"}
    with JudgeServer(model, tok, api_key_env=KEY_ENV) as server:
        port = server.httpd.server_address[1]

        def post(headers: dict, data: bytes = b"") -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.putrequest("POST", "/v1/chat/completions", skip_host=True)
            for k, v in {"Host": f"127.0.0.1:{port}", **auth, **headers}.items():
                conn.putheader(k, v)
            conn.endheaders(data)
            reply = conn.getresponse()
            status, text = reply.status, reply.read().decode()
            conn.close()
            return status, text

        n = str(len(body))
        assert post({"Content-Length": n}, body.encode())[0] == 200
        assert post({"Content-Length": "-5"})[0] == 400  # used to block a thread
        assert post({"Content-Length": str(10**12)})[0] == 413  # used to try to read 1 TB
        assert post({})[0] == 411
        for bad in ("0", "-1", '"8"', "true", "1.5"):
            text = body[:-1] + f', "max_tokens": {bad}}}'
            status, reply = post({"Content-Length": str(len(text))}, text.encode())
            assert (status, "max_tokens must be a positive integer" in reply) == (400, True)
        assert post({"Content-Length": n, "Host": "evil.example:80"}, body.encode())[0] == 421
        wrong = {"Content-Length": n, "Authorization": "Bearer nope"}
        assert post(wrong, body.encode())[0] == 401
    assert "hmac.compare_digest" in inspect.getsource(judge_server.JudgeServer.authorized)


def test_model_judges_show_a_progress_bar_when_asked(ab_model, capsys):
    model, tok = ab_model
    LocalJudge(model, tok, batch_size=1, progress=True)(PROMPTS, FIRST, SECOND)
    assert "judging" in capsys.readouterr().err
    LocalJudge(model, tok, batch_size=1)(PROMPTS, FIRST, SECOND)
    assert "judging" not in capsys.readouterr().err
