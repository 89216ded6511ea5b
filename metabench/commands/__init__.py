"""The command line: one module per ``metabench`` command, and :mod:`metabench.commands.cli` dispatching
to them. The top layer: nothing imports it."""
