import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Runs in tests write their reference log-prob cache here, not into the user's ~/.cache/gpo.
os.environ.setdefault("GPO_CACHE_DIR", tempfile.mkdtemp(prefix="gpo-test-cache-"))


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees the warn-once warnings afresh."""
    from gpo.losses.numerics import reset_warnings

    reset_warnings()
    yield


def write_tiny_preferences(path, n: int = 48, seed: int = 0) -> None:
    """A learnable standard-format set: chosen starts with 'good', rejected with 'bad'."""
    import json
    import random

    from gpo.models.tiny import DEFAULT_WORDS

    rng = random.Random(seed)
    words = [w for w in DEFAULT_WORDS if w.isalpha() and w not in ("good", "bad")]
    with open(path, "w") as f:
        for _ in range(n):
            prompt = " ".join(rng.choices(words, k=rng.randint(2, 6)))
            chosen = "good " + " ".join(rng.choices(words, k=rng.randint(1, 4)))
            rejected = "bad " + " ".join(rng.choices(words, k=rng.randint(1, 4)))
            f.write(
                json.dumps({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
            )
            f.write("\n")


@pytest.fixture
def active_lora():
    """``make(model, std=0.1)``: LoRA (r 4, all linear layers) with its B matrices drawn from
    N(0, std) instead of zeros, so the adapters change the outputs and A gets gradients too."""
    import torch

    from gpo.models.loading import add_lora

    def make(model, std: float = 0.1):
        model = add_lora(model, 4, 8, 0.0, "all-linear")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, std)
        return model

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + tokenizer saved with save_pretrained (loaded via from_pretrained)."""
    from gpo.models.tiny import tiny_model_and_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = tiny_model_and_tokenizer(seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-data") / "prefs.jsonl"
    write_tiny_preferences(path)
    return path


@pytest.fixture
def tiny_config(tiny_model_dir, tiny_data_file, tmp_path):
    """``make(name, **overrides)``: a quiet LoRA TrainConfig on the tiny model and data, with its
    run folder at ``tmp_path / name`` (tests override only what they vary)."""
    from gpo.train.config import TrainConfig

    def make(name: str, **overrides):
        base = dict(
            model=str(tiny_model_dir),
            data=str(tiny_data_file),
            out=str(tmp_path / name),
            finetune="lora",
            batch_size=4,
            logging_steps=1,
            kl_prompts=0,
            save_steps=0,
            save_final=False,
            progress=False,
            report_to=["none"],
        )
        base.update(overrides)
        return TrainConfig(**base)

    return make


@pytest.fixture(scope="session")
def user_gpt2(tmp_path_factory):
    """A user's GPT-2: 256 positions, no chat template (tests/user_models.py)."""
    from user_models import gpt2_256

    return gpt2_256(tmp_path_factory.mktemp("user-gpt2"))


@pytest.fixture(scope="session")
def user_llama(tmp_path_factory):
    """A user's Llama: 512 positions, no chat template (tests/user_models.py)."""
    from user_models import llama_512

    return llama_512(tmp_path_factory.mktemp("user-llama"))
