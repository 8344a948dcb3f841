"""`python -m steerkit ...`: the same as the `steerkit` command."""

import sys

from steerkit.cli import main

sys.exit(main())
