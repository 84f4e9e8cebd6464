"""Calling the CLI in-process and checking how it ends."""
from __future__ import annotations

from ablation.__main__ import main


def one_line_error(capsys, argv: list[str]) -> str:
    """Run `argv`; assert it ends in exit 2 with one ``error: ...`` line and no traceback; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err
