"""How a command declares its settings: one config class, options generated from its fields.

A command module builds one :class:`CommandSettings` and calls its ``add_arguments(parser)``; ``slidr`` (see
:mod:`slidr.cli.main`) then resolves the settings before the command runs and hands them over as
``args.settings``, a frozen, validated instance of the class::

    SETTINGS = CommandSettings(SuperpixelJobConfig, flags=[
        Flag("index"), Flag("superpixels.method", choices=("slic", "fh")), Flag("workers"), ...])

    def add_arguments(parser):
        SETTINGS.add_arguments(parser)
        parser.add_argument("--json", metavar="FILE", help="also write the report to FILE")

    def run(args):
        cfg: SuperpixelJobConfig = args.settings
        ...

Every command with settings gets:

- ``--config FILE``: a YAML file of settings (a path or a packaged config's name), unless ``config=False``;
- ``KEY=VALUE`` dotted overrides, anywhere on the command line (before, between or after options);
- one ``--option`` per :class:`Flag`, typed and documented by its field (``setting(..., help=...)``), the
  default shown from the field: defaults are written once, in the config class;
- ``--print-config``: print the fully resolved settings as YAML and exit 0 without running anything (what it
  prints, given back as ``--config``, gives the same settings);
- validation of every value (types, integers, ranges: the class's ``validate``) before any work starts; an error
  names the option or override and the key.

Order of precedence: field defaults < ``--config`` file < ``KEY=VALUE`` overrides < options; giving one key both
as an override and as an option is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

from slidr.config import ConfigError, Override, RawText, dump_config, load_config
from slidr.errors import SlidrError
from slidr.utils.io import check_output

OVERRIDE_PATTERN = re.compile(r"^[A-Za-z_*][\w*]*(\.[\w*]+)*=")


@dataclass(frozen=True)
class Flag:
    """A command-line option that sets one field of the settings.

    Parameters
    ----------
    key : dotted path of the field in the settings class, e.g. ``"superpixels.n_segments"``.
    option : the option string; default ``--`` + the key's last part with ``_`` -> ``-`` (``--n-segments``).
    short : an extra short option string, e.g. ``"-k"``.
    help : help text; default the field's ``setting(help=...)``. ``(default: X)`` is appended from the field's
        default unless the text already says ``default``.
    metavar : as argparse's; default the option's name in capitals.
    choices : allowed values; default the field's ``Literal`` values.
    nargs : as argparse's; default ``"+"`` for list fields.
    parse : text -> value, for values written differently on the command line (``800x450`` -> ``[800, 450]``);
        raise ``ValueError`` or :class:`SlidrError` on bad text. Default: the text is read according to the
        field's type (``none`` / ``null`` is ``None`` for optional fields).
    negate : for a boolean field: the option sets it to false (``--no-preview`` for ``previews``).
    group : options sharing a group name are mutually exclusive.
    """

    key: str
    option: Optional[str] = None
    short: Optional[str] = None
    help: Optional[str] = None
    metavar: Any = None
    choices: Optional[Sequence[str]] = None
    nargs: Any = None
    parse: Optional[Callable[[str], Any]] = None
    negate: bool = False
    group: Optional[str] = None

    @property
    def option_string(self) -> str:
        return self.option or "--" + self.key.rsplit(".", 1)[-1].replace("_", "-")

    @property
    def dest(self) -> str:
        return "setting:" + self.key


class CommandSettings:
    """The settings of one command: their config class, its options and how to resolve them.

    Parameters
    ----------
    cls : the frozen config class (``args.settings`` is an instance).
    flags : options generated from fields.
    config : add ``--config FILE``.
    config_help : help text of ``--config``.
    default_config : the config file used without ``--config`` (a path or a packaged config's name).
    config_path : computes the config file from the other arguments instead of ``--config`` (e.g. the
        ``config.yaml`` of a run folder).
    base_config : computes the config file used when ``--config`` is not given, before ``default_config`` (e.g.
        the run folder's ``config.yaml`` when resuming: see :func:`resumed_run_config`).
    fixed : dotted keys the command sets itself, after everything else (``{"mode": "probe"}``).
    extra_overrides : computes more ``KEY=VALUE`` overrides from the other arguments, applied before the
        positional ones (e.g. the demo's ``--pretrain KEY=VALUE``).
    overrides_help : help text of the positional ``KEY=VALUE`` overrides.
    required : option strings of the command's own options that must be given unless ``--print-config``.
    finalize : derives the settings the command runs with from the loaded ones (e.g. fills settings left null for
        a rule to decide), so that ``--print-config`` shows what will run.
    """

    def __init__(self, cls: type, flags: Sequence[Flag] = (), *, config: bool = True,
                 config_help: Optional[str] = None, default_config: Optional[str] = None,
                 config_path: Optional[Callable[[argparse.Namespace], Optional[str | Path]]] = None,
                 base_config: Optional[Callable[[argparse.Namespace], Optional[str | Path]]] = None,
                 fixed: Optional[Mapping[str, Any]] = None,
                 extra_overrides: Optional[Callable[[argparse.Namespace], list[str]]] = None,
                 overrides_help: Optional[str] = None, required: Sequence[str] = (),
                 finalize: Optional[Callable[[Any], Any]] = None) -> None:
        self.cls = cls
        self.flags = list(flags)
        self.config = config and config_path is None
        self.config_help = config_help
        self.default_config = default_config
        self.config_path = config_path
        self.base_config = base_config
        self.fixed = dict(fixed or {})
        self.extra_overrides = extra_overrides
        self.overrides_help = overrides_help
        self.required = list(required)
        self.finalize = finalize
        for flag in self.flags:
            field_of(cls, flag.key)  # fails early on a wrong key

    # --- declaring ---------------------------------------------------------------------------------------------

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add ``--config``, the generated options, ``--print-config`` and the ``KEY=VALUE`` positional."""
        if self.config:
            default = f" (default: {self.default_config})" if self.default_config else ""
            parser.add_argument("--config", metavar="FILE", default=None,
                                help=(self.config_help or "YAML file of settings (the keys --print-config shows)")
                                + "; a path or a packaged config's name (`slidr configs` lists them)" + default)
        groups: dict[str, Any] = {}
        for flag in self.flags:
            target: Any = parser
            if flag.group is not None:
                if flag.group not in groups:
                    groups[flag.group] = parser.add_mutually_exclusive_group()
                target = groups[flag.group]
            self._add_flag(target, flag)
        parser.add_argument("--print-config", action="store_true",
                            help="print the resolved settings as YAML and exit without running anything")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help=self.overrides_help or "settings by dotted path, anywhere on the command line")
        parser.set_defaults(_settings=self, _parser=parser)

    def _add_flag(self, target: Any, flag: Flag) -> None:
        f, hint = field_of(self.cls, flag.key)
        names = [flag.option_string] + ([flag.short] if flag.short else [])
        help_text = flag.help or f.metadata.get("help")
        if not help_text:
            raise TypeError(f"{self.cls.__name__}.{flag.key} has no help text: declare it with setting(help=...)")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required:
            help_text += " (required)"
        elif "default" not in help_text:
            shown = _shown_default(f)
            if shown is not None:
                help_text += f" (default: {shown})"
        base = _strip_optional(hint)
        kwargs: dict[str, Any] = {"dest": flag.dest, "default": None, "help": help_text}
        if base is bool:
            kwargs.update(action="store_const", const=not flag.negate)
        else:
            kwargs["metavar"] = flag.metavar or flag.option_string.lstrip("-").replace("-", "_").upper()
            choices = flag.choices
            if choices is None and typing.get_origin(base) is Literal:
                choices = typing.get_args(base)
            if choices is not None:
                kwargs["choices"] = list(choices)
                kwargs.pop("metavar")
            nargs = flag.nargs
            if nargs is None and typing.get_origin(base) in (list, tuple) and flag.parse is None:
                nargs = "+"
            if nargs is not None:
                kwargs["nargs"] = nargs
        target.add_argument(*names, **kwargs)

    # --- resolving ---------------------------------------------------------------------------------------------

    def resolve(self, args: argparse.Namespace) -> Any:
        """The validated settings given by ``args`` (config file, overrides, options, fixed values)."""
        if self.config_path is not None:
            path = self.config_path(args)
        else:
            path = (getattr(args, "config", None) or (self.base_config(args) if self.base_config else None)
                    or self.default_config)
        overrides: list[str | Override] = [*(self.extra_overrides(args) if self.extra_overrides else []),
                                           *getattr(args, "overrides", [])]
        flagged = []
        for flag in self.flags:
            value = getattr(args, flag.dest, None)
            if value is None:
                continue
            flagged.append(self._override(flag, value))
        given = {item.partition("=")[0].strip(): item for item in overrides if isinstance(item, str)}
        for override in flagged:
            if override.key in given:
                raise ConfigError(f"{override.key} is given twice: by {override.source.split()[0]} and by "
                                  f"{given[override.key]}", key=override.key)
        fixed = [Override(key, value, f"slidr {args.command}") for key, value in self.fixed.items()]
        try:
            settings: Any = load_config(self.cls, path, [*overrides, *flagged, *fixed])
            return self.finalize(settings) if self.finalize is not None else settings
        except ConfigError as error:
            missing = next((f for f in self.flags if error.key == f.key), None)
            if error.missing and missing is not None:
                raise ConfigError(f"{missing.option_string} is required (or {missing.key} in a --config file)"
                                  if self.config else f"{missing.option_string} is required", key=error.key,
                                  missing=True) from None
            raise

    def _override(self, flag: Flag, value: Any) -> Override:
        shown = " ".join(value) if isinstance(value, list) else ("" if isinstance(value, bool) else value)
        source = f"{flag.option_string} {shown}".strip()
        if isinstance(value, bool):
            return Override(flag.key, value, source)
        if flag.parse is not None:
            try:
                return Override(flag.key, flag.parse(value), source)
            except (ValueError, SlidrError) as error:
                raise ConfigError(f"{source}: {error}", key=flag.key) from None
        if isinstance(value, list):
            return Override(flag.key, [RawText(item) for item in value], source)
        return Override(flag.key, RawText(value), source)

    def check_required(self, args: argparse.Namespace) -> None:
        """The command's own required options (``required``): a usage error when one is missing."""
        parser = args._parser
        for option in self.required:
            action = next(a for a in parser._actions if option in a.option_strings)
            if getattr(args, action.dest, None) is None:
                parser.error(f"the following arguments are required: {option}")

    def dump(self, settings: Any) -> str:
        return dump_config(settings)


@dataclass(frozen=True)
class Output:
    """An output of a command, checked by ``slidr`` before the command runs (:func:`check_outputs`).

    A command module lists them in ``OUTPUTS``; an output that cannot be created or written is refused with one
    line naming the option, before any work.

    Parameters
    ----------
    option : the option giving the path, e.g. ``"--out"`` (its value is ``args.<option without dashes>``); a text
        without leading dashes describes an output that no option names (its path: ``default``).
    kind : ``"folder"`` or ``"file"``.
    default : the path the command writes when the option is not given (from the parsed arguments, the settings
        resolved: ``args.settings``); None: nothing is written then.
    """

    option: str
    kind: Literal["folder", "file"]
    default: Optional[Callable[[argparse.Namespace], Optional[str | Path]]] = None

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")


def check_outputs(args: argparse.Namespace, outputs: Sequence[Output]) -> None:
    """Refuse an output that cannot be created or written (:func:`slidr.utils.io.check_output`), before work."""
    for output in outputs:
        named = output.option.startswith("-")
        path = getattr(args, output.dest, None) if named else None
        option = output.option
        if path is None and output.default is not None:
            path = output.default(args)
            option = f"{output.option} (default)" if named else output.option
        if path is not None:
            check_output(path, output.kind, option)


def resumed_run_config(args: argparse.Namespace) -> Optional[Path]:
    """With ``--resume``, the ``config.yaml`` of the run folder ``--out`` (when it has one): resuming continues
    with the run's own settings; overrides on top are compared with them when the run starts."""
    if getattr(args, "resume", False) and getattr(args, "out", None):
        saved = Path(args.out) / "config.yaml"
        if saved.is_file():
            return saved
    return None


def takes_overrides(args: argparse.Namespace) -> bool:
    """Whether the chosen command accepts ``KEY=VALUE`` overrides."""
    return getattr(args, "_settings", None) is not None


def is_override(text: str) -> bool:
    """Whether a command-line word is a ``dotted.key=value`` override."""
    return bool(OVERRIDE_PATTERN.match(text))


def prepare_settings(args: argparse.Namespace, extras: Sequence[str], parser: argparse.ArgumentParser) -> bool:
    """Resolve ``args.settings`` before the command runs; ``True`` when the command must not run
    (``--print-config`` printed the settings).

    ``extras`` are the words argparse did not place (overrides after an option); anything else is refused as
    argparse would.
    """
    settings: Optional[CommandSettings] = getattr(args, "_settings", None)
    if extras:
        unplaced = [word for word in extras if settings is None or not is_override(word)]
        if unplaced:
            (getattr(args, "_parser", None) or parser).error(f"unrecognized arguments: {' '.join(unplaced)}")
        args.overrides = [*args.overrides, *extras]
    if settings is None:
        return False
    args.settings = settings.resolve(args)
    if args.print_config:
        sys.stdout.write(settings.dump(args.settings))
        return True
    settings.check_required(args)
    return False


# --- values written differently on the command line ---------------------------------------------------------------


def parse_size(text: str) -> list[int]:
    """``"800x450"`` -> ``[800, 450]`` (width x height)."""
    width, sep, height = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return [int(width), int(height)]
    except ValueError:
        raise ValueError(f"must look like WIDTHxHEIGHT (e.g. 800x450), got {text!r}") from None


def none_or_text(*none_words: str) -> Callable[[str], Optional[str]]:
    """A parser giving ``None`` for the words ``none_words`` (any case), the text otherwise."""
    words = {word.lower() for word in none_words}

    def parse(text: str) -> Optional[str]:
        return None if text.lower() in words else text

    return parse


def count(minimum: int = 1) -> Callable[[str], int]:
    """argparse ``type`` of a command's own integer option: an integer >= ``minimum``, else a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


# --- fields -------------------------------------------------------------------------------------------------------


def field_of(cls: type, key: str) -> tuple[dataclasses.Field, Any]:
    """The dataclass field at dotted ``key`` of ``cls`` and its type."""
    owner: Any = cls
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else {}
        if part not in fields:
            raise TypeError(f"{cls.__name__} has no field {key!r}")
        found, hint = fields[part], typing.get_type_hints(owner)[part]
        owner = _strip_optional(hint)
    return found, hint


def config_classes(cls: type) -> list[type]:
    """``cls`` and every config class reachable through its fields."""
    found: list[type] = []

    def visit(hint: Any) -> None:
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if hint not in found:
                found.append(hint)
                for hint_of_field in typing.get_type_hints(hint).values():
                    visit(hint_of_field)
        else:
            for arg in typing.get_args(hint):
                visit(arg)

    visit(cls)
    return found


def _strip_optional(hint: Any) -> Any:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if type(None) in typing.get_args(hint) and len(args) == 1:
        return args[0]
    return hint


def _shown_default(f: dataclasses.Field) -> Optional[str]:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)
