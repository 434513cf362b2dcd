"""`python -m seqgraph ...` runs the command line, as `seqgraph ...` does."""

import sys

from seqgraph.cli import main

sys.exit(main())
