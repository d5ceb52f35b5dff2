"""``python -m probes``: the ``probes`` command."""

import sys

from probes.cli import main

sys.exit(main())
