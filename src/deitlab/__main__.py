"""``python -m deitlab`` (also what ``torchrun -m deitlab`` runs)."""

import sys

from deitlab.cli import main

sys.exit(main())
