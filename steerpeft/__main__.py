"""`python -m steerpeft ...`: the same as the `steerpeft` command."""

import sys

from steerpeft.cli import main

sys.exit(main())
