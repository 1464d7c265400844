"""The ``slidr`` command. Each module here is one subcommand and defines:

- ``NAME`` and ``HELP``: the subcommand's name and one-line help;
- ``add_arguments(parser)``: its options (every option has a help text);
- ``run(args) -> int | None``: does the work; raises :class:`slidr.errors.SlidrError` for bad input.

Modules import heavy dependencies inside ``run`` so that ``slidr --help`` stays fast.
"""
