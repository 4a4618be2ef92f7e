"""``python -m proxy``: the same commands as the ``partner-proxy`` console script."""
import sys

from proxy.cli import main

sys.exit(main())
