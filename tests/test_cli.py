import json
import os
import subprocess
import sys
from pathlib import Path

import gpo
from gpo.cli import main

TESTS = Path(__file__).parent


def test_losses_table(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name, loss in gpo.LOSSES.items():
        assert name in out
        assert loss.formula in out
    assert "no: [-inf, -0.695]" in out  # Savage's non-convex region


def test_losses_json_keys_and_user_loss(capsys):
    assert main(["losses", "--json", "--loss", "user_losses:smooth_hinge"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [*gpo.LOSSES, "user_losses:smooth_hinge"]
    keys = ["name", "f0", "df0", "d2f0", "strength", "convex", "nonconvex_regions", "tail"]
    assert all(list(r) == keys for r in rows)
    assert rows[0]["strength"] == 0.5


def test_unknown_loss_error_lists_names(capsys):
    assert main(["losses", "--loss", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpo: error: unknown loss 'nope'")
    assert all(name in err for name in gpo.LOSSES)


def test_invalid_loss_refused_then_allowed(capsys):
    assert main(["losses", "--loss", "user_losses:increasing"]) == 2
    assert "--allow-invalid" in capsys.readouterr().err
    assert main(["losses", "--loss", "user_losses:increasing", "--allow-invalid"]) == 0


def test_console_script_runs():
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    out = subprocess.run(
        [sys.executable, "-m", "gpo.cli", "losses", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert len(json.loads(out)) == len(gpo.LOSSES)
