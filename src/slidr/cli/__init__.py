"""The ``slidr`` command. Each module here is one subcommand and defines:

- ``NAME`` and ``HELP``: the subcommand's name and one-line help;
- ``SETTINGS``: a :class:`slidr.cli.settings.CommandSettings` over the command's frozen config class (which
  gives ``--config``, options generated from fields, ``KEY=VALUE`` overrides anywhere, ``--print-config`` and
  validation before anything runs); a command without settings (``report``, ``configs``) has none;
- ``add_arguments(parser)``: ``SETTINGS.add_arguments(parser)`` plus its own options (output folders, progress
  bars; every option has a help text);
- ``run(args) -> int | None``: does the work with ``args.settings`` (resolved and validated by
  :mod:`slidr.cli.main` before ``run``); raises :class:`slidr.errors.SlidrError` for bad input.

Modules import heavy dependencies inside ``run`` so that ``slidr --help`` stays fast. Helper modules without
``NAME`` (``settings``) are not commands.
"""
