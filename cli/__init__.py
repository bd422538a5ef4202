"""The ``taskbus`` command: the operator's process (typer CLI), and the ``taskbus up``
supervisor that runs the whole stack as child processes (``cli/_up/``).

It is the top layer: it may use every other package (through their public names);
nothing imports it.
"""

from ._app import app as app
from ._app import main as main

__all__ = ["app", "main"]
