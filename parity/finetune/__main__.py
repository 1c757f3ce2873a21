"""``python -m parity.finetune``: see ``parity.finetune.suite.main``."""
import sys

from .suite import main

sys.exit(main())
