"""gpo's sampler (``gpo.models.sampling.sample``) vs plain ``model.generate``, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sampling.py --json        # smollm2 + tiny (~10 min)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/sampling.py --models tiny # the harness in seconds

For each model and shape (batch x new tokens) both samplers run on the same left-padded chat
prompts of the built-in gold task's held-out split, alternating gpo, HF, gpo, HF (``--repeats``
rounds, the median kept), in one process after one untimed warm-up of each. Equal work: every
row generates exactly ``new`` tokens on both sides (HF: ``min_new_tokens = max_new_tokens``,
which masks EOS; gpo: no EOS set), so neither side gains from early stops; HF otherwise runs on
its defaults except ``top_k=0`` (its default top-50 would sample another distribution) and
``do_sample=True``. Tokens/s counts generated tokens only; % of peak counts 2 x parameters FLOPs
per generated token against the fp32 matmul peak measured here (2048^3 ``a @ b``).

Same distribution: greedy decoding gives the same tokens on both sides (checked on 16 prompts x
32 tokens per model and printed); the statistical tests of sampled draws are in
``tests/test_decode.py``.

``--json`` prints ``{model: {key: {gpo_tokens_per_s, hf_tokens_per_s, ratio, gpo_pct_peak}}}``;
the key is the batch size (``"8"``) for 48 new tokens and ``"<batch>@256"`` for 256.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from gpo.gold.prompts import make_prompts
from gpo.models.decode import decode
from gpo.models.sampling import _generate, cut_at_eos, encode_chat_prompts, eos_ids, pad_id

SHAPES = [(8, 48), (32, 48), (128, 48), (8, 256), (32, 256)]


def matmul_peak(n: int = 2048, runs: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(runs):
        a @ b
    return 2 * n**3 * runs / (time.perf_counter() - t)


def load(name: str) -> tuple[Any, Any]:
    if name == "tiny":
        from gpo.models.tiny import tiny_model_and_tokenizer

        model, tok = tiny_model_and_tokenizer()
    else:
        from gpo.models.loading import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(name)
    return model.eval(), tok


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_shape(model: Any, tok: Any, prompts: list[list[int]], batch: int, new: int, rounds: int):
    pad = pad_id(model, tok)
    rows = prompts[:batch]
    g = torch.Generator().manual_seed(0)
    hf = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": True, "top_k": 0}

    def ours() -> None:
        decode(model, rows, 1, new, set(), pad, 1.0, 1.0, g)

    def theirs() -> None:
        _generate(model, rows, 1, {**hf, "pad_token_id": pad}, pad, 0)

    with torch.inference_mode():
        ours(), theirs()  # warm-up
        times = [(timed(ours), timed(theirs)) for _ in range(rounds)]
    tokens = batch * new
    return tokens / statistics.median(t[0] for t in times), tokens / statistics.median(
        t[1] for t in times
    )


def greedy_identical(model: Any, tok: Any, prompts: list[list[int]]) -> bool:
    eos, pad = eos_ids(model, tok), pad_id(model, tok)
    kwargs = {"max_new_tokens": 32, "do_sample": False, "pad_token_id": pad}
    with torch.inference_mode():
        ours = decode(model, prompts[:16], 1, 32, eos, pad, temperature=0)
        theirs = _generate(model, prompts[:16], 1, {**kwargs, "eos_token_id": sorted(eos)}, pad, 0)
    return ours == [cut_at_eos(ids, eos)[0] for ids in theirs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny"])
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds per shape")
    args = parser.parse_args(argv)
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak / 1e9:.0f} GFLOP/s", file=sys.stderr)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.models:
        model, tok = load(name)
        params = sum(p.numel() for p in model.parameters())
        texts = [p.text for p in make_prompts(128, 0, "test")]
        prompts = encode_chat_prompts(tok, texts)
        same = greedy_identical(model, tok, prompts)
        print(
            f"\n{name}: {params / 1e6:.1f}M parameters; greedy identical: {same}", file=sys.stderr
        )
        print(
            f"{'shape':>8} {'gpo tok/s':>10} {'HF tok/s':>9} {'ratio':>6} {'% peak':>7}",
            file=sys.stderr,
        )
        results[name] = {}
        for batch, new in SHAPES:
            mine, hf = run_shape(model, tok, prompts, batch, new, args.repeats)
            key = str(batch) if new == 48 else f"{batch}@{new}"
            pct = 100 * mine * 2 * params / peak
            results[name][key] = {
                "gpo_tokens_per_s": round(mine, 1),
                "hf_tokens_per_s": round(hf, 1),
                "ratio": round(mine / hf, 2),
                "gpo_pct_peak": round(pct, 1),
            }
            print(
                f"{key:>8} {mine:>10.1f} {hf:>9.1f} {mine / hf:>5.2f}x {pct:>6.1f}%",
                file=sys.stderr,
                flush=True,
            )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
