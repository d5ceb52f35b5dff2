"""``python -m probes.cli``: the ``probes`` command."""

import sys

from probes.cli import main

sys.exit(main())
