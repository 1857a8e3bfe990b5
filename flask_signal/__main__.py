"""``python -m flask_signal``: the ``flask-signal`` command."""

import sys

from .cli import main

sys.exit(main())
