"""Reference log-probs cached on disk, shared by every run and sweep that uses the same pi_ref.

pi_ref never changes during training, so each pair's reference log-probs are computed once and
then read back, in this run (later epochs, evals) and in later runs on the same data.

Keys (so that a changed input never returns a stale value):
- the folder is named by a fingerprint of the reference itself: a hash of every weight and
  buffer (LoRA adapters excluded: the reference runs with them off), the model config, the
  mixed-precision setting and the torch/transformers versions;
- each entry by a hash of the pair's token ids (prompt, chosen, rejected), which covers the data
  and every tokenization setting (template, truncation, EOS handling).

Entries hold the summed log-prob and the token count of each response, from which either
reduction follows. A value is bit-identical to recomputing it in the same batch; recomputed in a
different batch (other batch size or padding) float rounding differs by ~1e-7 relative.

Files: ``part-*.npz`` (written atomically, read with ``allow_pickle=False``), one per flush of
one process; many small parts are merged into one when a cache is opened. Each part stores a
checksum of its arrays: a damaged part (or one without a checksum) is ignored and its values
recomputed. A checksum catches damage, not a forger who can write into the folder: share a
``GPO_CACHE_DIR`` only with people you trust. A cache that cannot be written (disk full,
read-only) is a warning, once: the run goes on, computing what it cannot store.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gpo.data.collate import PairBatch, SeqBatch, SharedPromptBatch

_MERGE_AT = 16  # parts


def model_fingerprint(model: nn.Module, extra: str = "") -> str:
    """Hash of the reference network's weights, buffers and config (LoRA tensors excluded)."""
    import transformers

    h = hashlib.blake2b(digest_size=16)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    meta = {
        "class": type(base).__name__,
        "config": config.to_json_string() if config is not None else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "extra": extra,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name, t in model.state_dict().items():
        if "lora_" in name:
            continue
        # A PEFT model's base weights hash like the plain model's: LoRA and full runs share.
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _key(prompt: Tensor, chosen: Tensor, rejected: Tensor) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (prompt, chosen, rejected):
        ids = part.to(torch.int64).cpu().numpy()
        h.update(len(ids).to_bytes(8, "little"))
        h.update(ids.tobytes())
    return h.digest()


def pair_keys(batch: SeqBatch | SharedPromptBatch) -> list[bytes] | None:
    """One key per pair of a pair batch; ``None`` for batches that are not pairs."""
    if isinstance(batch, SharedPromptBatch):
        p, pm = batch.prompt_ids, batch.prompt_mask.bool()
        c, cm = batch.completion_ids, batch.completion_mask.bool()
        return [
            _key(p[i][pm[i]], c[2 * i][cm[2 * i]], c[2 * i + 1][cm[2 * i + 1]])
            for i in range(batch.num_pairs)
        ]
    if isinstance(batch, PairBatch):
        b = batch.num_pairs
        ids, comp = batch.input_ids, batch.completion_mask.bool()
        prompt = batch.attention_mask.bool() & ~comp
        return [_key(ids[i][prompt[i]], ids[i][comp[i]], ids[b + i][comp[b + i]]) for i in range(b)]
    return None


class RefLogpCache:
    """Per-pair ``(sum log-prob, tokens)`` of chosen and rejected under one reference model."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._values: dict[bytes, tuple[float, float, int, int]] = {}
        self._new: dict[bytes, tuple[float, float, int, int]] = {}
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # parts whose checksum did not match (ignored)
        self.writable = True  # False after a failed write: the run goes on without storing
        self._load()

    def __len__(self) -> int:
        return len(self._values)

    def _load(self) -> None:
        parts = sorted(self.folder.glob("part-*.npz"))
        for path in parts:
            try:
                with np.load(path, allow_pickle=False) as f:
                    keys, sums, tokens = f["keys"], f["sums"], f["tokens"]
                    whole = bytes(f["checksum"]) == _checksum(keys, sums, tokens)
            except (OSError, ValueError, KeyError):
                continue  # removed by a concurrent merge, or damaged: recomputed when needed
            if not whole:
                self.rejected += 1
                continue
            for k, s, t in zip(keys, sums, tokens, strict=True):
                self._values[k.tobytes()] = (float(s[0]), float(s[1]), int(t[0]), int(t[1]))
        if len(parts) >= _MERGE_AT and self._write(self._values):
            for path in parts:
                path.unlink(missing_ok=True)

    def get(self, keys: list[bytes]) -> tuple[Tensor, Tensor] | None:
        """``(sums [2B], tokens [2B])`` chosen-first, or ``None`` unless every key is cached."""
        found = [self._values.get(k) for k in keys]
        if any(v is None for v in found):
            self.misses += len(keys)
            return None
        self.hits += len(keys)
        rows = [v for v in found if v is not None]
        sums = torch.tensor([v[0] for v in rows] + [v[1] for v in rows], dtype=torch.float32)
        tokens = torch.tensor([v[2] for v in rows] + [v[3] for v in rows], dtype=torch.int64)
        return sums, tokens

    def put(self, keys: list[bytes], sums: Tensor, tokens: Tensor) -> None:
        """Store chosen-first ``sums`` and ``tokens`` ``[2B]`` of the pairs ``keys`` (new keys)."""
        b = len(keys)
        s, t = sums.detach().float().cpu().tolist(), tokens.cpu().tolist()
        for i, k in enumerate(keys):
            if k not in self._values:  # the first value stays: runs agree on what they read
                self._values[k] = self._new[k] = (s[i], s[b + i], int(t[i]), int(t[b + i]))

    def flush(self) -> None:
        """Write the entries added since the last flush as a new part (atomic)."""
        if self._new:
            self._write(self._new)
            self._new = {}

    def _write(self, entries: dict[bytes, tuple[float, float, int, int]]) -> bool:
        """Store ``entries`` as a new part; False (one warning per cache) if that fails."""
        if not self.writable:
            return False
        keys = np.frombuffer(b"".join(entries), dtype=np.uint8).reshape(len(entries), 16)
        values = list(entries.values())
        sums = np.array([(v[0], v[1]) for v in values], dtype=np.float32)
        tokens = np.array([(v[2], v[3]) for v in values], dtype=np.int64)
        checksum = np.frombuffer(_checksum(keys, sums, tokens), dtype=np.uint8)
        name = f"part-{uuid.uuid4().hex}"
        tmp = self.folder / f".{name}.tmp.npz"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, keys=keys, sums=sums, tokens=tokens, checksum=checksum)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / f"{name}.npz")
        except OSError as e:  # disk full, read-only: the values are only a speed-up
            tmp.unlink(missing_ok=True)
            self.writable = False
            warnings.warn(
                f"reference log-prob cache {self.folder}: cannot write ({e.strerror or e}); "
                "going on without storing new values",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        return True


def _checksum(keys: np.ndarray, sums: np.ndarray, tokens: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for a in (keys, sums, tokens):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.digest()
