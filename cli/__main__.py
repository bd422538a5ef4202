"""``python -m cli``: the ``taskbus`` command without the installed entry point."""

import sys

from ._app import main

sys.exit(main())
