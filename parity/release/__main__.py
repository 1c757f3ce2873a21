"""``python -m parity.release``: see ``parity.release.gate.main``."""
import sys

from parity.release.gate import main

sys.exit(main())
