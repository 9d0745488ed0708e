"""``python -m metered``: the same CLI as the ``metered`` command."""

from metered.cli import main

raise SystemExit(main())
