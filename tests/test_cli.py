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


def test_losses_lists_every_objective_that_loss_accepts(capsys):
    """Every name in OBJECTIVES is discoverable from `gpo losses`: a GPO loss row, or a family
    and a divergence of the f-divergence tables, each with its formula."""
    from gpo.losses.objectives import FAMILIES, OBJECTIVES

    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in OBJECTIVES:
        family, _, divergence = name.partition(":")
        if divergence:
            assert f"\n{family}  " in out and f"\n{divergence} " in out, name
            assert FAMILIES[family].formula in out
            assert gpo.DIVERGENCES[divergence].derivative in out
        else:
            assert f"\n{name} " in out


def test_experiment_flags_are_generated_from_the_config_dataclasses():
    """Each init field of an experiment config is a flag with the dataclass's default (absent
    flags leave the default to the dataclass); renamed flags and taylor's --loss still work."""
    import dataclasses

    from gpo.cli import build_parser
    from gpo.cli.experiment import EXPERIMENTS
    from gpo.cli.flags import flag_name, values_from_args

    parser = build_parser()
    for name, (config, _, _) in EXPERIMENTS.items():
        fields = [f for f in dataclasses.fields(config) if f.init]
        assert values_from_args(parser.parse_args(["experiment", name]), config) == {}
        for f in fields:
            value = getattr(config(), f.name)
            argv = [str(v) for v in value] if isinstance(value, list) else [str(value)]
            args = parser.parse_args(["experiment", name, flag_name(f), *argv])
            assert values_from_args(args, config) == {f.name: value}, (name, f.name)
    args = parser.parse_args(["experiment", "bandit", "--points", "7", "--betas", "0.5", "3"])
    assert values_from_args(args, EXPERIMENTS["bandit"][0]) == {"max_points": 7, "betas": [0.5, 3]}


def test_taylor_loss_flag_adds_to_the_builtin_losses(tmp_path):
    argv = ["experiment", "taylor", "--loss", "user_losses:smooth_hinge", "--betas", "1"]
    assert main([*argv, "--points", "3", "--no-plot", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["losses"] == [*gpo.LOSSES, "user_losses:smooth_hinge"]
