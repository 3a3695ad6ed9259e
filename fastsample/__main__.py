"""``python -m fastsample ...`` is the ``fastsample`` command."""

from .cli import main

raise SystemExit(main())
