"""``python -m cli``: the same as the ``m3migrate`` command."""

from cli.main import main

main()
