"""``python -m parity.finetune``: see ``parity.finetune.suite.main``."""
import sys

from parity.finetune.suite import main

sys.exit(main())
