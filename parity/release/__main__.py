"""``python -m parity.release``: see ``parity.release.gate.main``."""
import sys

from .gate import main

sys.exit(main())
