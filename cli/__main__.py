"""``python -m cli``: the ``taskbus`` command without the installed entry point."""

from ._app import main

main()
