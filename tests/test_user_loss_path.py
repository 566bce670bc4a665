"""A ``pkg.module:func`` loss in the working directory imports under the ``gpo`` console script
(which, unlike ``python -m``, does not put the working directory on ``sys.path``), and both
entry points resolve it by one rule: the working directory last on ``sys.path``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GPO = Path(sys.executable).parent / "gpo"


def _gpo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(GPO), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(not GPO.exists(), reason="the gpo console script is not installed")
def test_a_loss_module_in_the_working_directory_imports(tmp_path: Path) -> None:
    package = tmp_path / "mylosses"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "smooth.py").write_text(
        "import torch.nn.functional as F\n\n\ndef softplus(v):\n    return F.softplus(-v)\n"
    )
    done = _gpo(tmp_path, "losses", "--loss", "mylosses.smooth:softplus", "--json")
    assert done.returncode == 0, done.stderr
    names = [r["name"] for r in json.loads(done.stdout)]
    assert "mylosses.smooth:softplus" in names

    missing = _gpo(tmp_path, "losses", "--loss", "nomod:f")
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "gpo: error: cannot import module 'nomod' for loss 'nomod:f': No module named 'nomod' "
        f"(searched the installed packages, PYTHONPATH and the working directory {tmp_path})"
    )


def test_help_says_a_user_loss_runs_code(capsys: pytest.CaptureFixture[str]) -> None:
    """A pkg.module:func loss is imported: code execution, said where the option is offered."""
    from gpo.cli import main

    for command in ("train", "losses"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "importing PKG.MODULE runs its code, as running a script would" in text, command
        assert "use only code you trust" in text


#: A user loss that says where it was found from and which ``colorsys`` (a standard-library
#: module gpo does not import itself) it got, with a ``colorsys.py`` next to it.
MYMOD = """
import colorsys, os, sys
import torch.nn.functional as F
here = os.getcwd()
where = [i - len(sys.path) for i, p in enumerate(sys.path) if os.path.abspath(p or ".") == here]
mine = os.path.dirname(os.path.abspath(colorsys.__file__)) == here
print(f"cwd at {where}; colorsys from {'cwd' if mine else 'stdlib'}", file=sys.stderr)
def f(v):
    return F.softplus(-v)
"""


@pytest.mark.skipif(not GPO.exists(), reason="the gpo console script is not installed")
def test_gpo_and_python_m_resolve_a_user_loss_alike(tmp_path: Path) -> None:
    """``python -m`` used to put the working directory first, so a ``colorsys.py`` there won
    over the standard library's under ``python -m gpo.cli`` (and in sweeps, whose runs start
    that way) but not under ``gpo``."""
    (tmp_path / "mymod.py").write_text(MYMOD)
    (tmp_path / "colorsys.py").write_text("raise SystemExit('the shadowing colorsys ran')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = ["losses", "--loss", "mymod:f", "--json"]
    done = [
        subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        for cmd in ([str(GPO), *args], [sys.executable, "-m", "gpo.cli", *args])
    ]
    for d in done:
        assert d.returncode == 0, d.stderr
        assert "cwd at [-1]; colorsys from stdlib" in d.stderr  # last, once; never shadowing
    assert done[0].stdout == done[1].stdout
    assert "mymod:f" in [r["name"] for r in json.loads(done[0].stdout)]


def test_the_working_directory_is_on_sys_path_only_for_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to stay appended for good, so later imports anywhere in the process (a trainer,
    a notebook) could pick up modules from wherever the loss happened to be resolved."""
    from gpo.losses.family import resolve_loss

    monkeypatch.chdir(tmp_path)
    # a private copy without "" (which would stand for the working directory already)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    (tmp_path / "gpo_test_okloss.py").write_text(
        "import sys\nSEEN = sys.path[-1]\n\n\ndef f(v):\n    return -v\n"
    )
    (tmp_path / "gpo_test_badloss.py").write_text("raise RuntimeError('broken at import')\n")
    try:
        loss = resolve_loss("gpo_test_okloss:f")
        seen = sys.modules["gpo_test_okloss"].SEEN
        assert seen == str(tmp_path)  # last on sys.path during the import
        assert loss.name == "gpo_test_okloss:f" and sys.path == before
        with pytest.raises(ValueError, match="cannot import module 'gpo_test_nomod'"):
            resolve_loss("gpo_test_nomod:f")
        assert sys.path == before
        with pytest.raises(RuntimeError, match="broken at import"):  # not an ImportError
            resolve_loss("gpo_test_badloss:f")
        assert sys.path == before
    finally:
        for name in ("gpo_test_okloss", "gpo_test_badloss"):
            sys.modules.pop(name, None)
