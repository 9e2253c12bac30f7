"""``python -m pipelines`` behaves as the ``atlas`` command."""

from pipelines.commands.cli import main

main()
