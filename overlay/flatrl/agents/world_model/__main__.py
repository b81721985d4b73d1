"""`python -m flatrl.agents.world_model ...`"""

from .cli import main

raise SystemExit(main())
