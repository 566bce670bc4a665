"""Batched sampling of completions from any Hugging Face causal LM, at token level.

Prompts go in as token ids (e.g. from :func:`encode_chat_prompts`), are left-padded into
batches and decoded by :func:`gpo.models.decode.decode` (a static KV cache, one prompt pass for all
samples of a prompt, finished rows dropped; self-checked per model against ``model.generate``,
which is used instead where the check fails). Each completion is cut after its first EOS (kept, so
that its log-probability includes ending the turn) or left as is when ``max_new_tokens`` ran
out. Sampling is ancestral at the given temperature over the FULL vocabulary (``top_k=0``:
transformers otherwise silently applies top-50), so ``temperature=1, top_p=1`` draws from the
model's own distribution. ``temperature=0`` means greedy decoding. ``generate`` gets a generation
config built from these settings alone: nothing of the model's ``generation_config.json``
(repetition penalty, ``min_p``, suppressed tokens, ...) applies, in the fallback or the check.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gpo.data.collate import pad_rows
from gpo.losses.numerics import warn_once
from gpo.models.decode import Mixture, decode, decode_with_logps

#: Per-model verdict of :func:`fast_decode_ok`, kept on the model object (it belongs to that
#: instance and dies with it), as ``gpo.models.logps`` does for its fast paths.
_FAST_OK = "_gpo_fast_decode_ok"


@dataclass
class Samples:
    """Completions, one entry per (prompt, sample), prompt-major order."""

    prompt_index: list[int] = field(default_factory=list)
    sample_index: list[int] = field(default_factory=list)
    #: Generated ids, cut after the first EOS (included) or at ``max_new_tokens``.
    completion_ids: list[list[int]] = field(default_factory=list)
    #: Decoded completion without special tokens.
    text: list[str] = field(default_factory=list)
    #: True when the completion ended with EOS (False: truncated by ``max_new_tokens``).
    finished: list[bool] = field(default_factory=list)
    #: Each completion's log-probability under the sampled model (untempered, EOS included),
    #: from gpo's decode loop; None where ``model.generate`` sampled instead.
    logps: list[float] | None = None

    def __len__(self) -> int:
        return len(self.completion_ids)

    def for_prompt(self, i: int) -> list[str]:
        """The texts sampled for prompt ``i``."""
        return [t for p, t in zip(self.prompt_index, self.text, strict=True) if p == i]


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """All ids that end a completion: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an EOS token")
    return ids


def pad_id(model: Any, tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, model.generation_config.pad_token_id):
        if isinstance(value, int):
            return value
    return min(eos_ids(model, tokenizer))


def cut_at_eos(ids: Sequence[int], eos: set[int]) -> tuple[list[int], bool]:
    """``ids`` up to and including the first EOS; and whether there was one."""
    for k, t in enumerate(ids):
        if t in eos:
            return list(ids[: k + 1]), True
    return list(ids), False


def encode_chat_prompts(
    tokenizer: Any, prompts: Sequence[str | list[dict[str, str]]]
) -> list[list[int]]:
    """Token ids of chat prompts (a user string or a message list) with the generation prompt."""
    out = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        out.append(list(ids))
    return out


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's global RNG (generate draws from it) without leaking the change outside."""
    if seed is None:
        yield
        return
    # manual_seed seeds every CUDA device too: fork (and so restore) their states as well, or a
    # GPU run's dropout stream would restart at each evaluation.
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        yield


@contextmanager
def _no_model_generation_config(model: Any) -> Iterator[None]:
    """Hide the model's own ``generation_config`` (every module's, a PEFT wrapper's included):
    ``generate`` fills each setting not passed from it (transformers 5.x: every unset one; 4.5x:
    every one left at the global default), so a passed config alone cannot keep a
    ``repetition_penalty`` or ``min_p`` of the model's ``generation_config.json`` out."""
    from transformers import GenerationConfig

    saved = [(m, m.generation_config) for m in model.modules() if "generation_config" in vars(m)]
    try:
        for m, _ in saved:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, config in saved:
            m.generation_config = config


def _generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    num_samples: int,
    settings: dict[str, Any],
    pad: int,
    seed: int | None,
) -> list[list[int]]:
    """The same contract as :func:`gpo.models.decode.decode`, through ``model.generate`` with a
    generation config of ``settings`` alone (see :func:`_no_model_generation_config`)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(num_samples)]
    input_ids, mask = pad_rows(rows, pad, "left")
    input_ids, mask = input_ids.to(device), mask.to(device)
    config = GenerationConfig(**settings)
    with _seeded(seed), _no_model_generation_config(model):
        generated = model.generate(
            input_ids=input_ids, attention_mask=mask, generation_config=config
        )
    return generated[:, input_ids.shape[1] :].tolist()


#: The self-check: greedy tokens, samples per prompt (the prompt's cache rows repeated), and the
#: longest prompt suffix it uses (a one-time cost, whatever the prompts' length).
_CHECK_TOKENS, _CHECK_SAMPLES, _CHECK_PROMPT_LEN = 6, 2, 64


def _decode_matches_generate(
    model: Any, prompts: Sequence[Sequence[int]], eos: set[int], pad: int
) -> bool:
    """gpo's loop against ``generate``, greedy, on the shortest, a middle and the longest prompt
    (left padding), two rows per prompt from one prefill (the cache-row repeat), with one
    prompt's rows also ended early (:func:`_token_of_one_row`) so that the batch is compacted
    while the other rows go on: every path of the loop that sampling takes."""
    picks = sorted({0, len(prompts) // 2, len(prompts) - 1})
    few = [list(prompts[i])[-_CHECK_PROMPT_LEN:] for i in picks]
    greedy = {"max_new_tokens": _CHECK_TOKENS, "do_sample": False, "pad_token_id": pad}
    theirs = _generate(model, few, 1, {**greedy, "eos_token_id": sorted(eos)}, pad, None)
    theirs = [cut_at_eos(ids, eos)[0] for ids in theirs]
    # Greedy tokens do not depend on where rows stop: theirs, cut at the extra end token too,
    # is the answer with it.
    stop = eos | _token_of_one_row(theirs)
    ours = decode(model, few, _CHECK_SAMPLES, _CHECK_TOKENS, stop, pad, temperature=0)
    return ours == [cut_at_eos(ids, stop)[0] for ids in theirs for _ in range(_CHECK_SAMPLES)]


def _token_of_one_row(rows: list[list[int]]) -> set[int]:
    """A token that only one row has, before its last position (as an end token, it stops that
    row while the others go on), preferably not its first, so that a step runs on all rows
    before the compaction; empty when there is none."""
    for first in (1, 0):
        for i, row in enumerate(rows):
            others = {t for j, other in enumerate(rows) if j != i for t in other}
            for t in row[first:-1]:
                if t not in others:
                    return {t}
    return set()


def fast_decode_ok(
    model: Any, prompts: Sequence[Sequence[int]], eos: set[int], pad: int, holder: Any = None
) -> bool:
    """Whether gpo's decode loop gives ``generate``'s greedy tokens on this model (checked once
    per model, :func:`_decode_matches_generate`, on ``prompts`` sorted by length; the verdict is
    kept on the model object). A model whose forward refuses the static cache, or whose rows the
    loop cannot repeat or drop, falls back to ``generate`` with one notice."""
    holder = model if holder is None else holder  # a merged copy's verdict is its source's
    ok = getattr(holder, _FAST_OK, None)
    if ok is None:
        try:
            with torch.inference_mode():
                ok = _decode_matches_generate(model, prompts, eos, pad)
        except (TypeError, ValueError, RuntimeError, AttributeError, NotImplementedError):
            ok = False
        if not ok:
            warn_once(
                f"fast-decode:{type(model).__name__}",
                f"gpo's decode loop does not apply to {type(model).__name__}: sampling with "
                "model.generate instead (slower)",
            )
        setattr(holder, _FAST_OK, ok)
    return bool(ok)


def _adapters_active(model: Any) -> bool:
    from gpo.models.loading import is_peft

    if not is_peft(model):
        return False
    layers = [m for m in model.modules() if hasattr(m, "disable_adapters") and m is not model]
    return any(not m.disable_adapters for m in layers)


def _all_float32(model: nn.Module) -> bool:
    return all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())


@contextmanager
def _sampling_view(model: Any) -> Iterator[Any]:
    """The network to decode with: for a PEFT model with active adapters and float32 weights, a
    merged copy (``W + s B A`` computed afresh, so the trained model is untouched), which runs
    each layer as one matmul instead of three; otherwise the model itself. Half-precision base
    weights are not merged: PEFT adds ``s B A`` into the bf16/fp16 weight, where an update below
    about 2^-9 of an entry (early LoRA training's) rounds away, and the copy would be a different,
    rounded policy. Unmerged, the adapters run in float32 beside the base layer, as in training."""
    if not _adapters_active(model) or not _all_float32(model):
        yield model
        return
    merged = copy.deepcopy(model).merge_and_unload()
    try:
        yield merged
    finally:
        del merged


def sample(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    num_samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 128,
    seed: int | None = None,
    show_progress: bool = False,
    desc: str = "sampling",
    mixture: Mixture | None = None,
) -> Samples:
    """Sample ``num_samples`` completions for each prompt (see the module docstring); with a
    ``mixture``, from the geometric mixture of the policy and pi_ref (IPO-MD,
    :class:`gpo.models.decode.Mixture`; ``logps`` stay the policy's own).

    A batch holds ``batch_size // num_samples`` prompts (at least one) with all their samples
    (128 rows by default: on CPU a decode step's matmuls are bound by reading the weights, so
    tokens/s grows with the batch, 1.6x from 32 to 128 rows on SmolLM2);
    prompts are batched in order of length, so padding stays small. Deterministic for a given
    ``seed`` and ``batch_size`` (each batch is seeded from ``seed``; sampled tokens depend on the
    batch composition, so a different ``batch_size`` gives different, equally valid samples).
    The model's train/eval mode is restored afterwards.
    """
    if num_samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("num_samples, max_new_tokens and batch_size must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("empty prompt: every prompt needs at least one token")

    eos = eos_ids(model, tokenizer)
    pad = pad_id(model, tokenizer)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    per_batch = max(1, batch_size // num_samples)
    batches = [order[k : k + per_batch] for k in range(0, len(order), per_batch)]
    # One seed per batch, so batch b's samples do not depend on how long earlier batches ran.
    batch_seeds: list[int | None] = [None] * len(batches)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        batch_seeds = torch.randint(0, 2**62, (len(batches),), generator=g).tolist()

    gen_kwargs = _generate_kwargs(max_new_tokens, pad, eos, temperature, top_p)
    completions: dict[tuple[int, int], list[int]] = {}
    logps: dict[tuple[int, int], float] = {}  # filled by gpo's loop only
    bar = tqdm(
        total=len(prompt_ids) * num_samples,
        desc=desc,
        unit="seq",
        disable=not show_progress,
        leave=False,
    )
    with _eval_mode(model), torch.inference_mode(), _sampling_view(model) as net:
        fast = fast_decode_ok(net, [prompt_ids[i] for i in order], eos, pad, model)
        _check_mixture(mixture, fast)
        for batch, bseed in zip(batches, batch_seeds, strict=True):
            prompts = [prompt_ids[i] for i in batch]
            if fast:
                gen = torch.Generator(next(net.parameters()).device)
                # Unseeded: draw the seed from torch's global RNG (as generate would use it),
                # never reseed that RNG itself.
                gen.manual_seed(bseed if bseed is not None else int(torch.randint(2**62, ())))
                args = (eos, pad, temperature, top_p, gen, True, mixture)
                new, new_logps = decode_with_logps(net, prompts, num_samples, max_new_tokens, *args)
            else:
                new = _generate(net, prompts, num_samples, gen_kwargs, pad, bseed)
                new_logps = [math.nan] * len(new)
            for k, ids in enumerate(new):
                completions[batch[k // num_samples], k % num_samples] = ids
                logps[batch[k // num_samples], k % num_samples] = new_logps[k]
            bar.update(len(new))
    bar.close()
    out = _collect(completions, len(prompt_ids), num_samples, tokenizer, eos)
    if fast:
        out.logps = [logps[i, j] for i, j in zip(out.prompt_index, out.sample_index, strict=True)]
    return out


def _check_mixture(mixture: Mixture | None, fast: bool) -> None:
    if mixture is not None and not fast:  # generate cannot draw from the mixture
        raise ValueError(
            "sampling from a mixture with pi_ref needs gpo's decode loop, which this model "
            "does not pass (its self-check against model.generate failed)"
        )


def _generate_kwargs(
    max_new_tokens: int, pad: int, eos: set[int], temperature: float, top_p: float
) -> dict[str, Any]:
    """``generate``'s settings for the same distribution: full vocabulary (``top_k=0``)."""
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad}
    kwargs["eos_token_id"] = sorted(eos)
    if temperature == 0:
        kwargs["do_sample"] = False
    else:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    return kwargs


def _collect(
    completions: dict[tuple[int, int], list[int]], n: int, k: int, tokenizer: Any, eos: set[int]
) -> Samples:
    """Completions in prompt-major order, cut after their first EOS, decoded."""
    out = Samples()
    for i in range(n):
        for j in range(k):
            ids, finished = cut_at_eos(completions[i, j], eos)
            out.prompt_index.append(i)
            out.sample_index.append(j)
            out.completion_ids.append(ids)
            out.text.append(tokenizer.decode(ids, skip_special_tokens=True))
            out.finished.append(finished)
    return out
