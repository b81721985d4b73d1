"""``python -m flatrl.study``."""

from flatrl.study.cli import main

raise SystemExit(main())
