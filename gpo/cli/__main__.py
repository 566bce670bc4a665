"""``python -m gpo.cli``: the same as the ``gpo`` command."""

import sys

from gpo.cli import main

sys.exit(main())
