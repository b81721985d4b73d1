"""``python -m flatrl.tdmpc2.offline [train|collect] key=value ...``; see :mod:`.cli`."""

from flatrl.tdmpc2.offline.cli import main

raise SystemExit(main())
