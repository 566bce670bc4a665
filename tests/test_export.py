"""A gpo run folder that the ecosystem reads: ``final/`` loads with plain transformers (full
fine-tuning) or PEFT (LoRA), and ``gpo export RUN --merge OUT`` writes a standalone folder that
plain ``AutoModelForCausalLM.from_pretrained`` loads and generates with.

Two short ``gpo train`` runs on the tiny model (2 steps, a high learning rate so the LoRA
adapters are far from zero) feed every test; the exported model's logits are compared with the
PEFT-loaded run's (LoRA) or ``final/``'s (full) on a chat-templated prompt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_args import train_argv
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpo.cli import main

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"  # raised inside PEFT
)
PROMPT = [{"role": "user", "content": "tell me a fact about the sun ."}]


@pytest.fixture(scope="module")
def runs(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_runs")
    out = {}
    for finetune, lr in (("lora", "0.05"), ("full", "0.01")):
        run = root / finetune
        argv = train_argv(tiny_model_dir, tiny_data_file, run, "--finetune", finetune)
        argv += ["--max-steps", "2", "--learning-rate", lr, "--save-final", "true"]
        argv += ["--ref-cache", "none", "--judge-prompts", "0"]
        assert main(argv) == 0
        out[finetune] = run
    return out


def _prompt_ids(tokenizer: Any) -> torch.Tensor:
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def test_final_loads_with_plain_transformers_or_peft(
    runs: dict[str, Path], tiny_model_dir: Path
) -> None:
    from peft import PeftModel

    full = AutoModelForCausalLM.from_pretrained(runs["full"] / "final")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = _prompt_ids(AutoTokenizer.from_pretrained(runs["full"] / "final"))
    assert not torch.allclose(_logits(full, ids), _logits(base, ids))  # trained

    adapter = runs["lora"] / "final"
    named = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(named) == tiny_model_dir.resolve()  # an absolute path to the base
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(named), adapter)
    assert not torch.allclose(_logits(lora, ids), _logits(base, ids))  # adapters are not zero


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_export_merge_writes_a_standalone_model(
    finetune: str,
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from peft import PeftModel

    out = tmp_path / "merged"
    assert main(["export", str(runs[finetune]), "--merge", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors"} <= files
    assert "adapter_config.json" not in files  # merged: no PEFT needed

    # standalone: the run (and, for LoRA, the base model) may go away
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    model = AutoModelForCausalLM.from_pretrained(moved)
    tokenizer = AutoTokenizer.from_pretrained(moved)
    assert tokenizer.chat_template is not None
    ids = _prompt_ids(tokenizer)
    final = runs[finetune] / "final"
    if finetune == "lora":
        named = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(named), final)
    else:
        reference = AutoModelForCausalLM.from_pretrained(final)
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), atol=1e-5, rtol=1e-5)

    gen = model.generation_config
    assert gen.eos_token_id == tokenizer.eos_token_id and gen.pad_token_id is not None
    new = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
    assert len(new) > 0
    # greedy decoding with the exported folder's own generation config gives the run's tokens,
    # and its tokenizer reads them back as the run's tokenizer does
    want = reference.generate(
        ids, max_new_tokens=6, do_sample=False, eos_token_id=gen.eos_token_id,
        pad_token_id=gen.pad_token_id,
    )[0, ids.shape[1] :]  # fmt: skip
    assert new.tolist() == want.tolist()
    text = tokenizer.decode(new, skip_special_tokens=True)
    assert text == AutoTokenizer.from_pretrained(final).decode(want, skip_special_tokens=True)
    assert text.split() and set(text.split()) <= set(tokenizer.get_vocab())  # vocabulary words


def test_export_errors_are_one_line_with_exit_code_2(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(*argv: str) -> str:
        assert main(list(argv)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    assert "no such run folder" in error("export", str(tmp_path / "nope"), "--merge", "o")
    no_final = tmp_path / "no-final"
    no_final.mkdir()
    (no_final / "config.json").write_text('{"loss": "logistic"}')  # a run's config, no model
    assert "--save-final false" in error("export", str(no_final), "--merge", str(tmp_path / "o"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    assert "not an empty folder" in error("export", str(runs["full"]), "--merge", str(taken))
    # a LoRA run whose base model is gone
    broken = tmp_path / "broken"
    shutil.copytree(runs["lora"] / "final", broken / "final")
    config = json.loads((broken / "final" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (broken / "final" / "adapter_config.json").write_text(json.dumps(config))
    assert "base model" in error("export", str(broken), "--merge", str(tmp_path / "o2"))
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()
