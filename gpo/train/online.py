"""Where each training step's pairs come from: the training data (:class:`OfflinePairs`, the
default) or the policy itself (:class:`OnlinePairs`, ``gpo train --online``; docs/online.md).

The trainer picks its source once, at set-up (:func:`pair_source`), asks it for this process's
pairs at every micro-step, and hands it the step's per-pair values after the optimizer step. It
never branches on the source, nor on the objective: online pairs are plain
:class:`~gpo.data.tokenize.TokenizedPair` s, so every objective trains on them unchanged.

Online (OAIF, Guo et al. 2024): for each prompt of the batch (its token ids from the data; a
preference row's ``chosen`` / ``rejected`` are ignored), two completions are sampled from the
current policy without gradient, by gpo's decode loop (:func:`gpo.models.sampling.sample`) at
temperature 1 and ``max_new_tokens``; the online judge scores P(first beats second), checked
(:func:`gpo.eval.win_rate.judge_scores`: a NaN or out-of-range score stops the run, naming the
prompt; no label is ever made up); the run's label strategy (:mod:`gpo.train.labels`) orients
each pair: ``hard`` draws the winner with that probability, ``soft`` keeps the more likely one as
chosen and carries its probability on the pair (``p_chosen``).
Every pair trained on is appended to ``RUN/online_pairs.jsonl`` (TRL rows, reusable with
``--data``), with ``score`` = P(chosen beats rejected) and ``step``.

Exact resume with no RNG state to save: the sampling seed and the label draws' seed are
functions of (run seed, step, rank, micro-step) alone (:func:`stream_seed`), and a resumed run
samples from the checkpoint's policy, bit for bit. So from step k + 1 on it draws exactly the
completions and labels the uninterrupted run drew. The issue asks for the sampling and label
RNGs in the checkpoint; deterministic per-step seeding gives the same exactness without them.
``online_pairs.jsonl`` is cut back to the checkpoint's step on resume (as ``metrics.jsonl`` is),
so a run killed with ``kill -9`` and resumed has no duplicate rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from gpo.data.builtin import builtin_task
from gpo.data.formats import Field, prompt_text
from gpo.data.tokenize import TokenizedPair
from gpo.eval.judges import Judge, resolve_judge, task_judge_spec
from gpo.eval.pairs import concat_values
from gpo.eval.win_rate import judge_scores
from gpo.io import read_jsonl
from gpo.models.decode import Mixture
from gpo.models.sampling import sample
from gpo.train.checkpoint import checkpoint_dirs
from gpo.train.run_record import output
from gpo.train.setup import pair_tokens
from gpo.train.tracking import repair_metrics

#: Every pair an online run trained on, one JSON row each, in the run folder.
ONLINE_PAIRS = "online_pairs.jsonl"


class PairSource(Protocol):
    """What the trainer asks for pairs (see the module docstring)."""

    def pairs(self, step: int, micro: int, indices: list[int]) -> list[TokenizedPair]:
        """This process's pairs for micro-step ``micro`` of optimizer step ``step``;
        ``indices``: its share of the global batch's rows of the training data."""
        ...

    def tokens(self, indices: list[int]) -> int:
        """Tokens (prompt + both responses) of the micro-step's pairs, all processes together;
        ``indices``: the whole global batch."""
        ...

    def end_step(self, step: int, values: list[dict[str, Tensor]]) -> dict[str, float]:
        """After the optimizer step: metrics to log for it (``values``: the step's per-pair
        values of every micro-step, all processes)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Keys for ``summary.json``."""
        ...


@dataclass
class OfflinePairs:
    """The training data's pairs, looked up by row."""

    train: list[TokenizedPair]

    def pairs(self, step: int, micro: int, indices: list[int]) -> list[TokenizedPair]:
        return [self.train[i] for i in indices]

    def tokens(self, indices: list[int]) -> int:
        return sum(pair_tokens(self.train[i]) for i in indices)

    def end_step(self, step: int, values: list[dict[str, Tensor]]) -> dict[str, float]:
        return {}

    def summary(self) -> dict[str, Any]:
        return {}


def stream_seed(seed: int, step: int, rank: int, micro: int, stream: str) -> int:
    """A 62-bit seed for one random stream (``sample``, ``labels``) of one micro-step of one
    process: a hash, so neighbouring steps and seeds get unrelated streams."""
    key = f"gpo-online:{seed}:{step}:{rank}:{micro}:{stream}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 2


def first_wins(scores: list[float], seed: int) -> list[bool]:
    """Hard labels: ``first`` wins with probability ``score`` (u < score, u ~ U[0, 1) from a
    generator seeded with ``seed``): a score of 1 always keeps ``first``, 0 never, 0.5 is a
    fair coin."""
    u = torch.rand(len(scores), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return [bool(x < s) for x, s in zip(u.tolist(), scores, strict=True)]


def completion_text(tokenizer: Any, prompt_ids: list[int], ids: list[int]) -> str:
    """A completion's text as it continues its prompt (a tokenizer may drop a leading space
    when decoding the completion alone), without special tokens."""
    whole = tokenizer.decode(prompt_ids + ids, skip_special_tokens=True)
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    if whole.startswith(head):
        return str(whole[len(head) :])
    return str(tokenizer.decode(ids, skip_special_tokens=True))


def pair_row(
    prompt: Field, texts: tuple[str, str], finished: tuple[bool, bool], eos: str | None
) -> dict:
    """A TRL row (standard, or conversational when the prompt is a message list) of a pair
    ``(chosen, rejected)``; ``*_finished: false`` marks a completion cut by ``max_new_tokens``
    (gpo then adds no EOS when the row is trained on offline). A standard row's finished
    completion with no text (the policy ended at once) is written as the EOS token string, which
    ``--data`` reads as that same completion (an empty response is refused as a data error)."""
    chosen, rejected = (
        t + eos if eos and done and not t.strip() and isinstance(prompt, str) else t
        for t, done in zip(texts, finished, strict=True)
    )
    if not isinstance(prompt, str):
        chosen = [{"role": "assistant", "content": chosen}]  # type: ignore[assignment]
        rejected = [{"role": "assistant", "content": rejected}]  # type: ignore[assignment]
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_finished": finished[0],
        "rejected_finished": finished[1],
    }


class JudgeFailed(ValueError):
    """The online judge raised or returned a bad score: the run stops (one line)."""


def resolve_online_judge(cfg: Any) -> Judge:
    """``online_judge`` built; plain ``gold`` on a built-in task means that task's own gold
    (``vader`` on the sentiment task), as ``--judge gold`` does."""
    spec = cfg.online_judge
    task = builtin_task(cfg.data)
    if task is not None:
        spec = task_judge_spec(spec, task.judge)
    judge = resolve_judge(spec)
    if hasattr(judge, "progress"):  # one bar per step would flood the log
        judge.progress = False
    return judge


def pair_source(trainer: Any, judge: Judge | None) -> PairSource:
    """The run's source of pairs, chosen once, here: online with a judge
    (:func:`resolve_online_judge`, built before the run folder is written to)."""
    if judge is None:
        return OfflinePairs(trainer.data.train)
    return OnlinePairs(trainer, judge)


class OnlinePairs:
    """Pairs sampled from the policy and labelled by a judge (see the module docstring).

    Needs the trainer's ``cfg``, ``data``, ``model``, ``reference``, ``tokenizer``, ``acc``,
    ``main``, ``labels``, ``run_dir``, ``start_step`` and ``save``."""

    def __init__(self, trainer: Any, judge: Judge) -> None:
        self.cfg, self.acc, self.main = trainer.cfg, trainer.acc, trainer.main
        self.model, self.tokenizer = trainer.model, trainer.tokenizer
        self.train = trainer.data.train
        self.prompts = {r.index: r.prompt for r in trainer.data.train_rows}
        self.judge = judge
        self.labels = trainer.labels  # hard: a drawn winner; soft: both orders, weighted
        # IPO-MD (Calandriello et al. 2024): samples from the geometric mixture with pi_ref.
        a = self.cfg.online_mixture
        self.mixture = Mixture(trainer.reference.model, a) if a > 0 else None
        self.reference = trainer.reference  # its clock: pi_ref's scoring of the step's pairs
        self.run_dir: Path = trainer.run_dir
        self.save = trainer.save
        self.path = self.run_dir / ONLINE_PAIRS
        if self.main and self.cfg.resume and self.path.exists():  # rows after the checkpoint go
            repair_metrics(self.path, trainer.start_step)
        self._recorded = False
        self._new_step()

    def _new_step(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._seconds = {"sample": 0.0, "judge": 0.0}
        self._start: float | None = None
        self._ref_start = 0.0
        self._micros = 0  # micro-steps of this step so far
        self._tokens = 0

    def _sample(self, step: int, micro: int, prompt_ids: list[list[int]]) -> Any:
        """Two completions per prompt, each cut to fit ``max_length`` after its prompt."""
        cfg, rank = self.cfg, self.acc.process_index
        seed = stream_seed(cfg.seed, step, rank, micro, "sample")
        out = sample(
            self.model,
            self.tokenizer,
            prompt_ids,
            2,
            cfg.max_new_tokens,
            1.0,
            seed=seed,
            mixture=self.mixture,
        )
        for k, ids in enumerate(out.completion_ids):
            room = max(1, cfg.max_length - len(prompt_ids[k // 2]))
            if len(ids) > room:
                out.completion_ids[k], out.finished[k] = ids[:room], False
        return out

    def pairs(self, step: int, micro: int, indices: list[int]) -> list[TokenizedPair]:
        start = time.perf_counter()
        if self._start is None:
            self._start, self._ref_start = start, self.reference.seconds
        base = [self.train[i] for i in indices]
        prompt_ids = [list(p.prompt_ids) for p in base]
        samples = self._sample(step, micro, prompt_ids)
        judged = time.perf_counter()
        self._seconds["sample"] += judged - start
        ids, finished = samples.completion_ids, samples.finished
        texts = [completion_text(self.tokenizer, prompt_ids[k // 2], c) for k, c in enumerate(ids)]
        prompts = [self.prompts[p.index] for p in base]
        scores = self._judge(step, [prompt_text(p) for p in prompts], texts[0::2], texts[1::2])
        self._seconds["judge"] += time.perf_counter() - judged
        seed = stream_seed(self.cfg.seed, step, self.acc.process_index, micro, "labels")
        pairs, eos = [], self.tokenizer.eos_token
        for k, (wins, p) in enumerate(self.labels.orient(scores, seed)):
            c, r = (2 * k, 2 * k + 1) if wins else (2 * k + 1, 2 * k)
            pairs.append(TokenizedPair(base[k].index, prompt_ids[k], ids[c], ids[r], p))
            row = pair_row(prompts[k], (texts[c], texts[r]), (finished[c], finished[r]), eos)
            score = scores[k] if wins else 1.0 - scores[k]
            self._rows.append({**row, "score": score, "step": step})
        self._micros += 1
        self._tokens = sum(pair_tokens(p) for p in pairs)
        return pairs

    def _judge(self, step: int, prompts: list[str], first: list[str], second: list[str]) -> list:
        """The checked scores; any failure stops the run with one line (and a checkpoint of
        the last finished step, when one process runs and this step trained nothing yet)."""
        try:
            return judge_scores(self.judge, prompts, first, second)
        except Exception as e:
            where = self._checkpoint_before(step)
            reason = " ".join(f"{type(e).__name__}: {e}".split())
            raise JudgeFailed(
                f"online judge {self.judge.name!r} failed at step {step} ({reason}); {where}"
            ) from e

    def _checkpoint_before(self, step: int) -> str:
        """Save step ``step - 1`` unless it is saved (or unsafe to save from here); say so."""
        done = step - 1
        saved = [int(p.name.split("-")[1]) for p in checkpoint_dirs(self.run_dir)]
        if done in saved:
            return f"--resume continues from the checkpoint of step {done}"
        if done > 0 and self._micros == 0 and self.acc.num_processes == 1:
            self.save(done)
            return f"checkpoint of step {done} written: --resume continues from it"
        if saved:
            return f"--resume continues from the newest checkpoint (step {saved[-1]})"
        return "no checkpoint to resume from"

    def tokens(self, indices: list[int]) -> int:
        if self.acc.num_processes == 1:
            return self._tokens
        local = torch.tensor([self._tokens], device=self.acc.device)
        return int(self.acc.gather(local).sum().item())

    def end_step(self, step: int, values: list[dict[str, Tensor]]) -> dict[str, float]:
        rows, seconds, start = self._rows, self._seconds, self._start or time.perf_counter()
        ref = self.reference.seconds - self._ref_start if self._start is not None else 0.0
        if self.acc.num_processes > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        if self.main:
            self._append(rows)
        v = concat_values(values)
        ratio = torch.cat([v["logratio_chosen"], v["logratio_rejected"]]).double()
        lengths = torch.cat([v["tokens_chosen"], v["tokens_rejected"]]).double()
        scores = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
        total = time.perf_counter() - start
        self._new_step()
        # The samples are the policy's own at temperature 1 (before this step's update), so the
        # mean of log pi_theta(y|x) - log pi_ref(y|x) over them is an unbiased estimate of
        # KL(pi_theta || pi_ref) over completions of at most max_new_tokens (as eval/kl), from
        # the log-probs the training forward computed anyway: no extra pass. Drawn from the
        # IPO-MD mixture they are not the policy's: the same mean is logged, not as a KL.
        kl = "online/kl" if self.mixture is None else "online/mixture_log_ratio"
        return {
            "online/judge_score": scores.mean().item(),
            "online/ties": (scores == 0.5).double().mean().item(),
            "online/completion_tokens": lengths.mean().item(),
            kl: ratio.mean().item(),
            "online/seconds_sample": seconds["sample"],
            "online/seconds_judge": seconds["judge"],
            "online/seconds_ref": ref,
            "online/seconds_train": max(0.0, total - seconds["sample"] - seconds["judge"] - ref),
        }

    def _append(self, rows: list[dict[str, Any]]) -> None:
        if not self._recorded:  # recorded once the run writes (so --overwrite deletes it)
            output(self.run_dir, ONLINE_PAIRS)
            self._recorded = True
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"online": True}
        if self.main and self.path.exists():
            scores = [r["score"] for r in read_jsonl(self.path)]
            out["online_judge_score"] = sum(scores) / len(scores) if scores else None
        return out
