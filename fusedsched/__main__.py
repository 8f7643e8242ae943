"""``python -m fusedsched``: the same as the ``fusedsched`` console script."""

from fusedsched.cli import main

raise SystemExit(main())
