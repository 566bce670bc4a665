"""Pluggable pairwise judges: who wins, ``first`` or ``second``, for each prompt?

A judge is any callable ``judge(prompts, first, second) -> list[float]`` with a ``name``; each
score is in [0, 1]: 1 when ``first`` wins, 0 when it loses, 0.5 for a tie, or a probability.
Four are built in (:data:`JUDGES`, the single list of names; :func:`resolve_judge` builds one):

- ``gold``: the closed-form gold preference of the built-in task (:mod:`gpo.gold`).
- ``vader``: the gold preference of the sentiment task (:mod:`gpo.gold.sentiment`),
  sigmoid((r*(first) - r*(second)) / T) with r* VADER's compound score of the response.
- ``local``: a local Hugging Face causal LM asked "Which response is better, A or B?", scored
  by the next-token probabilities of the two answer tokens (:mod:`gpo.eval.judge_local`).
- ``http``: an OpenAI-compatible chat-completions endpoint asked the same question; the API key
  comes only from an environment variable (:mod:`gpo.eval.judge_http`).

A spec ``pkg.module:func`` names a user's judge instead: any callable with the protocol above
(:class:`CallableJudge`; importing the module runs its code, so only trusted code).

Model judges prefer whichever answer slot they were trained to like (position bias), so the
``local`` and ``http`` judges ask each question twice, ``first`` as A and ``first`` as B, and
average: ``score = (P(A | first, second) + P(B | second, first)) / 2``. A judge that always
says "A" then scores every pair 0.5, and ``score(x, y) + score(y, x) == 1`` for every pair.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from gpo.gold.reward import check_version, gold_prefers, gold_probability
from gpo.gold.vader import TEMPERATURE, preference_probability, require_vader, vader_reward
from gpo.io import import_object

Prompt = str | Sequence[dict[str, str]]

#: The question model judges are asked; {prompt}, {a}, {b} are filled in, A/B are the labels.
JUDGE_TEMPLATE = (
    "You are comparing two responses to the same prompt.\n\n"
    "Prompt:\n{prompt}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "Which response is better, A or B? Answer with a single letter: A or B."
)
LABELS = ("A", "B")
#: Longer responses are cut to this many characters before judging (both orders alike).
MAX_RESPONSE_CHARS = 4000


@runtime_checkable
class Judge(Protocol):
    name: str

    def __call__(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> list[float]:
        """Per prompt, the score in [0, 1] that `first` beats `second`.

        1 win, 0.5 tie, 0 loss, or a probability.
        """
        ...


# --- the judge question, shared by the model judges and the judge server ----------------------


def _render_prompt(prompt: Prompt) -> str:
    """A prompt as text: a string as is; a message list as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def judge_question(prompt: Prompt, a: str, b: str) -> str:
    """The user message asking which of responses ``a`` (A) and ``b`` (B) is better."""
    return JUDGE_TEMPLATE.format(
        prompt=_render_prompt(prompt), a=a[:MAX_RESPONSE_CHARS], b=b[:MAX_RESPONSE_CHARS]
    )


def both_orders(
    prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
) -> list[str]:
    """The 2n questions: ``first`` as A for every prompt, then ``first`` as B for every prompt."""
    check_lengths(prompts, first, second)
    swapped = [judge_question(p, b, a) for p, a, b in zip(prompts, first, second, strict=True)]
    return [
        judge_question(p, a, b) for p, a, b in zip(prompts, first, second, strict=True)
    ] + swapped


def average_orders(p_a: Sequence[float]) -> list[float]:
    """Scores for ``first`` from P(answer A) over :func:`both_orders` questions (bias control)."""
    n = len(p_a) // 2
    return [0.5 * (p_a[i] + 1.0 - p_a[n + i]) for i in range(n)]


_CHOICE = re.compile(r"\b([AB])\b")


def parse_choice(reply: str) -> str | None:
    """The first standalone capital ``A`` or ``B`` in a reply ("Answer: B." gives B), or None."""
    m = _CHOICE.search(reply)
    return m.group(1) if m else None


def check_lengths(prompts: Sequence[Any], first: Sequence[str], second: Sequence[str]) -> None:
    if not len(prompts) == len(first) == len(second):
        raise ValueError(
            f"judge inputs differ in length: {len(prompts)} prompts, {len(first)} first, "
            f"{len(second)} second responses"
        )


# --- gold ----------------------------------------------------------------------------------


@dataclass
class GoldJudge:
    """The built-in task's gold preference (:func:`gpo.gold.reward.gold_prefers`).

    ``mode="deterministic"`` (default): 1 / 0.5 / 0 for a higher / equal / lower gold reward.
    ``mode="bt"``: the Bradley-Terry probability sigmoid(r*(first) - r*(second)), no sampling.
    ``version``: of the reward (:data:`gpo.gold.reward.VERSIONS`; 2 is the ``gold-v2`` task's).
    """

    mode: Literal["deterministic", "bt"] = "deterministic"
    version: int = 1
    name: str = "gold"

    def __post_init__(self) -> None:
        if self.mode not in ("deterministic", "bt"):
            raise ValueError(f"gold judge mode must be 'deterministic' or 'bt', got {self.mode!r}")
        check_version(self.version)

    def __call__(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> list[float]:
        check_lengths(prompts, first, second)
        triples = zip(prompts, first, second, strict=True)
        if self.mode == "bt":
            return [gold_probability(p, a, b, self.version) for p, a, b in triples]
        return [gold_prefers(p, a, b, version=self.version) for p, a, b in triples]


@dataclass
class VaderJudge:
    """The sentiment task's gold preference: sigmoid((r*(first) - r*(second)) / temperature),
    r* = VADER's compound score of the response (:mod:`gpo.gold.vader`; the prompt is not
    scored). Antisymmetric bit for bit: ``s(a, b) + s(b, a) == 1``; equal scores give 0.5."""

    temperature: float = TEMPERATURE
    name: str = "vader"

    def __post_init__(self) -> None:
        preference_probability(0.0, 0.0, self.temperature)  # checks T > 0
        require_vader()  # a missing optional dependency fails here, before any sampling

    def __call__(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> list[float]:
        check_lengths(prompts, first, second)
        return [
            preference_probability(vader_reward(a), vader_reward(b), self.temperature)
            for a, b in zip(first, second, strict=True)
        ]


# --- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeInfo:
    """A registered judge: a one-line description and where its class lives (imported lazily,
    so that ``gold`` needs neither torch nor a network)."""

    description: str
    target: str  # "module:Class"

    def load(self) -> type:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


#: The single source of judge names (CLI choices and error messages are built from it).
JUDGES: dict[str, JudgeInfo] = {
    "gold": JudgeInfo(
        "the built-in gold preference (options: mode, version)", "gpo.eval.judges:GoldJudge"
    ),
    "local": JudgeInfo(
        "a local HF causal LM asked 'A or B?', order-swapped (options: model, batch_size, ...)",
        "gpo.eval.judge_local:LocalJudge",
    ),
    "http": JudgeInfo(
        "an OpenAI-compatible chat endpoint, order-swapped (options: base_url, model, "
        "api_key_env, ...)",
        "gpo.eval.judge_http:HTTPJudge",
    ),
    "vader": JudgeInfo(
        "the sentiment task's gold: sigmoid((VADER(first) - VADER(second)) / T) (options: "
        f"temperature, default {TEMPERATURE:g}; needs vaderSentiment)",
        "gpo.eval.judges:VaderJudge",
    ),
}


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


_DOTTED = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def is_callable_spec(spec: str) -> bool:
    """``pkg.module:func`` (a user's judge), as opposed to ``name`` or ``name:key=value,...``."""
    name, _, rest = spec.strip().partition(":")
    return (
        name not in JUDGES
        and _DOTTED.fullmatch(name) is not None
        and _DOTTED.fullmatch(rest) is not None
    )


@dataclass
class CallableJudge:
    """A user's judge ``pkg.module:func``: ``fn(prompts, first, second) -> list[float]``."""

    fn: Any
    name: str

    def __call__(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> list[float]:
        return list(self.fn(prompts, first, second))


def parse_judge_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` -> (name, options); numbers/bools coerced.
    A ``pkg.module:func`` spec is its own name, without options."""
    if is_callable_spec(spec):
        return spec.strip(), {}
    name, _, rest = spec.strip().partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"judge option {item!r} in {spec!r} is not key=value")
        options[key.strip()] = _coerce(value.strip())
    return name.strip(), options


def task_judge_spec(spec: str, task_judge: str) -> str:
    """``spec`` with ``gold`` read as a built-in task's own gold, ``task_judge`` (``--judge gold``
    on the sentiment task is ``vader``); the spec's options are kept and win over the task's."""
    name, options = parse_judge_spec(spec)
    if name != "gold":
        return spec
    own, merged = parse_judge_spec(task_judge)
    merged.update(options)
    return own + (":" + ",".join(f"{k}={v}" for k, v in merged.items()) if merged else "")


def resolve_judge(spec: str, **options: Any) -> Judge:
    """Build a judge from a name in :data:`JUDGES`, e.g. ``resolve_judge("gold")``,
    ``resolve_judge("local", model="smollm2")`` or ``resolve_judge("http:base_url=URL,model=M")``,
    or import a user's ``pkg.module:func`` (:class:`CallableJudge`).

    Options in ``spec`` and keyword options are merged (keywords win). Unknown names or options
    raise a one-line ValueError listing the valid ones.
    """
    name, spec_options = parse_judge_spec(spec)
    if is_callable_spec(name):
        if options:
            raise ValueError(f"judge {name!r} (a user's callable) takes no options")
        fn = import_object(name, "judge")
        if not callable(fn):
            raise ValueError(f"judge {name!r} is not callable: {type(fn).__name__}")
        return CallableJudge(fn, name)
    if name not in JUDGES:
        raise ValueError(
            f"unknown judge {name!r}; valid judges: {', '.join(JUDGES)}, or 'pkg.module:func'"
        )
    cls = JUDGES[name].load()
    options = {**spec_options, **options}
    params = [p for p in inspect.signature(cls).parameters if p not in ("self", "name")]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"judge {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(params)}"
        )
    return cls(**options)
