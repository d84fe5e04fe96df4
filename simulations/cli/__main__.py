"""``python -m simulations.cli``: the ``fedmmrec`` command line."""

import sys

from simulations.cli import main

sys.exit(main())
