"""``python -m bagnet`` (also what ``torchrun -m bagnet train ...`` runs)."""

import sys

from .cli.main import main

sys.exit(main())
