"""How the CLI ends: a user error in one line (exit 2), a defect with its traceback and where to
report it (exit 1), Ctrl-C in one line (exit 130)."""
import pytest

from ablation import __main__ as cli
from ablation.errors import REPORT_TO, BadInput


def _raising(monkeypatch, exc: BaseException) -> None:
    """`standings` (no store, no data) raises `exc`."""
    def boom(args):
        raise exc
    monkeypatch.setattr(cli, "cmd_standings", boom)


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    _raising(monkeypatch, BadInput("x.yaml: `train.lr` must be a number"))
    assert cli.main(["standings"]) == 2
    assert capsys.readouterr().err == "error: x.yaml: `train.lr` must be a number\n"


@pytest.mark.parametrize("exc", [ValueError("internal"), LookupError("internal"), FileNotFoundError("internal"),
                                 AttributeError("internal")])
def test_a_defect_keeps_its_traceback_and_says_where_to_report_it(monkeypatch, capsys, exc):
    _raising(monkeypatch, exc)
    assert cli.main(["standings"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and f"{type(exc).__name__}: internal" in err
    assert err.strip().splitlines()[-1].endswith(f"please report it, with the traceback above, in {REPORT_TO}")


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    _raising(monkeypatch, KeyboardInterrupt())
    assert cli.main(["standings"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err


def test_expected_outcomes_are_one_line_too(monkeypatch, capsys):
    """A run that diverged, a study whose teacher processes failed: no defect, no traceback."""
    from ablation.study.runner import _run_at_most
    from ablation.train.loop import Diverged
    _raising(monkeypatch, Diverged("epoch 3: non-finite loss_g_rec"))
    assert cli.main(["standings"]) == 2
    assert capsys.readouterr().err == "error: epoch 3: non-finite loss_g_rec\n"
    import sys
    with pytest.raises(Exception) as e:
        _run_at_most([[sys.executable, "-c", "raise SystemExit(3)"]], 1)
    _raising(monkeypatch, e.value)
    assert cli.main(["standings"]) == 2
    assert "1 of 1 teacher runs failed (exit 3" in capsys.readouterr().err
