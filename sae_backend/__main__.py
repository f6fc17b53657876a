"""`python -m sae_backend`: the CLI (see sae_backend/cli/)."""

import sys

from .cli import main

sys.exit(main())
