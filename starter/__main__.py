"""``python -m starter``: the same as the ``dualwrite`` command."""

from starter.cli import main

main()
