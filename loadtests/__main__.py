"""``python -m loadtests``: see ``loadtests.run``."""

import sys

from loadtests.run import main

sys.exit(main())
