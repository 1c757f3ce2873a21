"""``python -m parity``: the ``bert-parity`` command (``parity.frontdoor``)."""
import sys

from parity.frontdoor import main

sys.exit(main())
