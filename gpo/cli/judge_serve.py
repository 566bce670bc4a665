"""``gpo judge-serve``: serve a local causal LM as an OpenAI-compatible judge (the server:
:mod:`gpo.eval.judge_server`)."""

from __future__ import annotations

import argparse
import math
from typing import Any


def cmd_judge_serve(args: argparse.Namespace) -> int:
    from gpo.eval.judge_server import JudgeServer  # torch: loaded only for this command
    from gpo.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    server = JudgeServer(
        model,
        tokenizer,
        args.mode,
        port=args.port,
        api_key_env=args.api_key_env,
        served_model=args.served_model,
        max_new_tokens=args.max_new_tokens_cap,
        max_threads=args.max_threads,
        timeout=args.timeout,
    )
    print(
        f"serving {args.model} ({args.mode}) as model {args.served_model!r} at {server.base_url}; "
        "Ctrl-C stops",
        flush=True,
    )
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_judge_serve_parser(sub: Any) -> None:
    """Register ``gpo judge-serve`` on the top-level subparsers."""
    p = sub.add_parser(
        "judge-serve", help="serve a local causal LM as an OpenAI-compatible judge on 127.0.0.1"
    )
    p.add_argument(
        "--model", default="smollm2", help="HF hub name or local folder; 'smollm2' = embedded"
    )
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument(
        "--mode",
        choices=["choice", "generate"],
        default="choice",
        help="choice: answer the likelier of A/B; generate: greedy decoding",
    )
    p.add_argument(
        "--api-key-env", metavar="VAR", help="require the key in this environment variable"
    )
    p.add_argument("--served-model", default="gpo-judge", help="the model name clients send")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    # The defaults live with the server (gpo.eval.judge_server); repeated here so that --help
    # shows them without importing torch.
    p.add_argument(
        "--max-new-tokens-cap",
        type=_positive_int,
        default=64,
        metavar="N",
        help="--mode generate: at most N new tokens per request; a larger max_tokens is cut to N "
        "(default: 64)",
    )
    p.add_argument(
        "--max-threads",
        type=_positive_int,
        default=32,
        metavar="N",
        help="serve at most N connections at once (a thread each); more are answered 503 at "
        "once, which the http judge retries (default: 32)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a client that sends or reads nothing for this long is disconnected, freeing its "
        "thread (default: 30)",
    )
    p.set_defaults(func=cmd_judge_serve)
