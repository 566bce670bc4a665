"""``python -m gpo.cli``: the same as the ``gpo`` command.

``python -m`` puts the working directory first on ``sys.path``; the ``gpo`` console script does
not. It is taken off here, so that both resolve a ``pkg.module:func`` loss by one rule: installed
packages and ``PYTHONPATH`` first, the working directory last (appended when a loss is imported,
in ``gpo.losses.family``). A module in the working directory named like
one that gpo imports while starting (``torch``, ``numpy``) still shadows it under ``python -m``,
which imports this package before any of its code runs; ``gpo`` and ``python -P -m gpo.cli`` do
not put the directory there at all.
"""

import os
import sys


def _drop_working_directory() -> None:
    """Remove the entry ``python -m`` put first (none with ``-P``/``PYTHONSAFEPATH``)."""
    if sys.flags.safe_path or not sys.path:
        return
    if os.path.abspath(sys.path[0] or os.curdir) == os.getcwd():
        del sys.path[0]


_drop_working_directory()

from gpo.cli import main  # noqa: E402 - after the sys.path fix, though gpo.cli is loaded already

sys.exit(main())
