"""``python -m sync_core`` is the ``davbridge`` command."""

from sync_core.cli import main

raise SystemExit(main())
