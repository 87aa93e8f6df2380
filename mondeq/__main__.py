"""``python -m mondeq``: the ``mondeq`` command (see :mod:`mondeq.cli.main`)."""
import sys

from mondeq.cli.main import main

sys.exit(main())
