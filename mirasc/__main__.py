"""`python -m mirasc` is the `mirasc` command."""

import sys

from .cli import main

sys.exit(main())
