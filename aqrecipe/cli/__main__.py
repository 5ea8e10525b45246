"""``python -m aqrecipe.cli ...``: the same as the ``aqrecipe`` command."""

from aqrecipe.cli.commands import entry_point

entry_point()
