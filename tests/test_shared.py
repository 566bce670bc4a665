"""The shared helpers every package uses: mean and SE, JSON lines, padding, prompt text."""

import gzip
import math

import pytest
import torch

from gpo.data.collate import pad_rows
from gpo.data.formats import PreferenceRow, prompt_text
from gpo.io import read_jsonl, write_jsonl
from gpo.stats import mean_se


def test_mean_se_by_hand_and_its_conventions():
    mean, se = mean_se([1.0, 0.0, 0.5, 1.0])
    assert mean == pytest.approx(0.625)
    sd = math.sqrt(sum((x - 0.625) ** 2 for x in (1.0, 0.0, 0.5, 1.0)) / 3)
    assert se == pytest.approx(sd / 2)
    # A tensor gives the same numbers as its list (float64 sums, no float32 rounding).
    assert mean_se(torch.tensor([1.0, 0.0, 0.5, 1.0])) == pytest.approx((mean, se))
    one_mean, one_se = mean_se([0.3])
    assert one_mean == 0.3 and math.isnan(one_se)  # undefined, not a claim of certainty
    with pytest.raises(ValueError, match="no values"):
        mean_se([])


def test_jsonl_round_trip_plain_and_gzip_and_line_numbered_errors(tmp_path):
    rows = [{"a": 1, "b": "é"}, {"a": 2, "b": [1, 2]}]
    for name in ("x.jsonl", "x.jsonl.gz"):
        write_jsonl(rows, tmp_path / name)
        assert read_jsonl(tmp_path / name) == rows
    # gzip output is byte-identical for the same rows (mtime 0)
    first = (tmp_path / "x.jsonl.gz").read_bytes()
    write_jsonl(rows, tmp_path / "x.jsonl.gz")
    assert (tmp_path / "x.jsonl.gz").read_bytes() == first
    assert gzip.decompress(first).decode().count("\n") == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'\xef\xbb\xbf{"ok": 1}\n\n{"broken": \n')
    with pytest.raises(KeyError, match=r"bad.jsonl: line 3: malformed JSON"):
        read_jsonl(bad, error=KeyError)
    bad.write_bytes(b'{"ok": 1}\n{"x": "\xff"}\n')
    with pytest.raises(ValueError, match=r"line 2: not valid UTF-8"):
        read_jsonl(bad)


def test_pad_rows_right_and_left():
    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_prompt_text_is_the_users_request():
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    assert prompt_text("plain") == "plain"
    assert prompt_text(chat) == "second"
    assert prompt_text([{"role": "system", "content": "only"}]) == "only"
    row = PreferenceRow(chat, "a", "b", conversational=True, index=0)
    assert prompt_text(row) == "second"
    with pytest.raises(ValueError, match="empty"):
        prompt_text([])
