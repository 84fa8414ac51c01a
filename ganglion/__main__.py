"""`python -m ganglion`: the same entry point as the `ganglion` console script."""

from ganglion.cli import main

raise SystemExit(main())
