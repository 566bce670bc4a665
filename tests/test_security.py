"""Security: no unpickling of untrusted data (safetensors weights, ``weights_only=True`` loads),
and remote code runs only when the user passes ``--trust-remote-code``."""

import ast
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import gpo
from gpo.cli import main
from gpo.train.checkpoint import checkpoint_dirs
from gpo.train.config import TrainConfig

SOURCES = sorted(Path(gpo.__file__).parent.rglob("*.py"))


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(call: ast.Call) -> str:
    return ast.unparse(call.func)


def test_every_torch_load_is_weights_only_and_nothing_unpickles() -> None:
    loads = 0
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "joblib", "cloudpickle"} & set(names), path
                if getattr(node, "module", None) == "torch":  # so every load is torch.load
                    assert "load" not in names, path
        for call in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            if _name(call) == "torch.load":
                loads += 1
                where = f"{path}:{call.lineno}"
                assert "weights_only" in kw, f"torch.load without weights_only at {where}"
                assert ast.literal_eval(kw["weights_only"]) is True, where
            if "allow_pickle" in kw:
                assert ast.literal_eval(kw["allow_pickle"]) is False, f"{path}:{call.lineno}"
            if "trust_remote_code" in kw:  # never hard-coded on: always the user's setting
                value = kw["trust_remote_code"]
                assert not (isinstance(value, ast.Constant) and value.value), f"{path}"
    assert loads >= 3  # checkpoint.py's optimizer, scheduler and RNG state


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what a hostile checkpoint file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model", str(model),
        "--data", str(data),
        "--out", str(out),
        "--finetune", "full",
        "--batch-size", "4",
        "--max-steps", "4",
        "--save-steps", "1",
        "--save-total-limit", "3",
        "--eval-steps", "0",
        "--kl-prompts", "0",
        "--save-final", "false",
        "--progress", "false",
        "--report-to", "none",
        *extra,
    ]  # fmt: skip


def test_hostile_pickle_in_a_checkpoint_is_refused_not_run(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(_args(tiny_model_dir, tiny_data_file, run)) == 0
    dirs = checkpoint_dirs(run)
    assert [d.name for d in dirs] == ["step-000001", "step-000002", "step-000003"]
    for d in dirs:  # weights are safetensors; only plain tensors/dicts are in the .pt files
        tokenizer = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
        assert {p.name for p in d.iterdir()} - tokenizer == {
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "optimizer.pt",
            "scheduler.pt",
            "rng.pt",
            "state.json",
        }
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), dirs[-1] / "optimizer.pt")
    (run / "summary.json").unlink()  # as if killed before the end (a finished run is kept)
    capsys.readouterr()
    assert main([*_args(tiny_model_dir, tiny_data_file, run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert not marker.exists(), "the pickle payload ran"
    assert "step-000003 is damaged (UnpicklingError" in out
    assert "resuming at step 2" in out


class _Stop(Exception):
    pass


@pytest.mark.parametrize("flag", [[], ["--trust-remote-code"], ["--trust-remote-code", "false"]])
def test_trust_remote_code_is_off_unless_passed(
    flag: list[str],
    tiny_model_dir: Path,
    tiny_data_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import transformers

    seen: dict[str, Any] = {}

    def tokenizer(path: str, **kw: Any) -> Any:
        seen["tokenizer"] = kw.get("trust_remote_code", "absent")
        return real_tokenizer(path, **kw)

    def model(path: str, **kw: Any) -> Any:
        seen["model"] = kw.get("trust_remote_code", "absent")
        raise _Stop("stop after the model is requested")

    real_tokenizer = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    assert main(_args(tiny_model_dir, tiny_data_file, tmp_path, *flag)) == 2
    assert "_Stop: stop after the model is requested" in capsys.readouterr().err
    want = flag == ["--trust-remote-code"]
    assert seen == {"tokenizer": want, "model": want}
    assert TrainConfig().trust_remote_code is False


def test_judge_api_key_never_reaches_the_run_folder_or_logs(
    tiny_config, tmp_path, monkeypatch, capfd
):
    """A run judged by the http judge (a real tiny model served on 127.0.0.1, key required):
    the key is used, and appears in no file of the run folder and in no output."""
    from gpo.eval.judge_server import JudgeServer
    from gpo.models.tiny import DEFAULT_WORDS, tiny_model_and_tokenizer
    from gpo.train.trainer import train

    secret = "sk-test-7f3a9c1e5b"
    monkeypatch.setenv("GPO_TEST_JUDGE_KEY", secret)
    judge_model, judge_tok = tiny_model_and_tokenizer(vocab_words=(*DEFAULT_WORDS, "A", "B"))
    with JudgeServer(judge_model, judge_tok, api_key_env="GPO_TEST_JUDGE_KEY") as server:
        spec = f"http:base_url={server.base_url},model=gpo-judge,api_key_env=GPO_TEST_JUDGE_KEY"
        cfg = tiny_config(
            "run", max_steps=2, eval_steps=2, judge=spec, judge_prompts=2,
            max_new_tokens=4, save_steps=1, report_to=["tensorboard"],
        )  # fmt: skip
        summary = train(cfg)
    assert 0.0 <= summary["eval"]["eval/win_rate"] <= 1.0  # the judge really answered
    out, err = capfd.readouterr()
    assert secret not in out + err
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "config.json" for p in files) and len(files) > 5
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


class _Listener:
    """A local HTTP server that records every request (method, Authorization) it receives."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                seen.append(self.headers.get("Authorization"))
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _sweep_folder(root: Path, judge: str) -> None:
    """Two runs (two losses at one beta) with final samples, as a downloaded sweep would be."""
    import json

    for loss in ("logistic", "hinge"):
        d = root / "runs" / f"loss={loss}"
        (d / "samples").mkdir(parents=True)
        config = {"loss": loss, "beta": 0.1, "seed": 0, "judge": judge}
        (d / "config.json").write_text(json.dumps(config))
        rows = [
            {"step": s, "loss": 1.0 / s, "eval/loss": 1.0, "eval/kl": 0.1 * s, "eval/kl_se": 0.01,
             "eval/mu_sq_loss": 0.05 * s, "eval/rewards/accuracies": 0.5,
             "eval/rewards/margins": 0.0, "eval/win_rate": 0.5, "eval/win_rate_se": 0.1}
            for s in (1, 2, 3)
        ]  # fmt: skip
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        sample = {"prompt": "tell me", "policy": f"{loss} says", "opponent": "x"}
        (d / "samples" / "step-000003.jsonl").write_text(json.dumps(sample) + "\n")


def test_report_never_builds_an_http_judge_from_a_run_folder(tmp_path, monkeypatch, capsys):
    """A shared sweep folder's config.json names a URL and an unrelated secret variable: the
    report refuses (one line, exit 2) and sends nothing anywhere; --judge works."""
    monkeypatch.setenv("UNRELATED_SECRET", "s3cr3t-value")
    listener = _Listener()
    try:
        _sweep_folder(
            tmp_path, f"http:base_url={listener.url},model=m,api_key_env=UNRELATED_SECRET"
        )
        assert main(["report", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gpo: error: the runs were judged by 'http:base_url=http://127.0.0.1")
        assert err.endswith(
            "gpo report does not build that judge from a run folder's config.json (it could "
            "send your API key anywhere): pass --judge SPEC on the command line\n"
        )
        assert listener.seen == []  # no request, so no key sent
        assert main(["report", str(tmp_path), "--judge", "gold"]) == 0
    finally:
        listener.close()


def test_url_credentials_are_masked_in_config_commands_and_report(tmp_path, capsys):
    """A judge base_url with user:password@ and ?api_key= is masked (***) in config.json,
    commands.sh, sweep.json, the printed commands and the report's summary."""
    import json

    from gpo.experiments.sweep import SweepConfig, run_sweep
    from gpo.io import redacted
    from gpo.train.config import saved_config

    spec = "http:base_url=https://bob:hunter2@judge.example/v1?api_key=sk-9f8e,model=m"
    masked = "http:base_url=https://***@judge.example/v1?api_key=***,model=m"
    assert saved_config(TrainConfig(judge=spec))["judge"] == masked
    cfg = SweepConfig(base={"judge": spec, "judge_prompts": 2}, grid={"beta": [0.1]})
    assert run_sweep(cfg, tmp_path / "sweep", print_commands=True) == 0
    printed = capsys.readouterr().out
    written = (tmp_path / "sweep" / "commands.sh").read_text()
    assert masked in printed and masked in written
    assert redacted({"sweep": cfg})["sweep"]["base"]["judge"] == masked
    _sweep_folder(tmp_path / "report", spec)
    summary = json.dumps(gpo_report(tmp_path / "report", spec))
    for text in (printed, written, summary):
        assert "hunter2" not in text and "sk-9f8e" not in text


def gpo_report(sweep: Path, judge: str) -> dict[str, Any]:
    """The report with the side-by-side judge given explicitly (gold under a URL-bearing name
    would fail to connect, so the side-by-side is skipped by judging no samples)."""
    from gpo.experiments.report import report

    for samples in sweep.rglob("samples"):
        for f in samples.iterdir():
            f.unlink()
    return report(sweep, judge=judge)


def test_resume_asks_again_for_a_masked_judge(tmp_path, capsys):
    """config.json keeps no credentials, so a resume must be given the judge again."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    spec = "http:base_url=https://bob:hunter2@judge.example/v1,model=m"
    from gpo.train.config import saved_config

    (run / "config.json").write_text(json.dumps(saved_config(TrainConfig(judge=spec))))
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run}/config.json: judge held credentials, which are not saved" in err
    assert "pass --judge again" in err and "hunter2" not in err
