"""`python -m featx.cli` is the `featx` command (as is `python -m featx`)."""

import sys

from featx.cli import main

sys.exit(main())
