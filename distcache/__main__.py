"""``python -m distcache`` runs the umbrella command."""

import sys

from .cli.main import main

sys.exit(main())
