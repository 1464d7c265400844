"""One configuration path for every command: generated options, overrides anywhere, validation before work,
``--print-config`` round trips, frozen configs, packaged configs."""

from __future__ import annotations

import dataclasses
import typing
from decimal import Decimal

import pytest
import yaml

from slidr.cli.bench import bench_modules
from slidr.cli.main import build_parser, command_modules, main, overrides_first
from slidr.cli.settings import CommandSettings, config_classes, field_of
from slidr.config import (
    ConfigError,
    DemoConfig,
    DownstreamConfig,
    PretrainConfig,
    SuperpixelConfig,
    SuperpixelJobConfig,
    load_config,
    packaged_config_class,
    packaged_configs,
    resolve_config_path,
    save_config,
    with_changes,
)

# every command (and benchmark) with settings: its argv prefix and values for its required options
REQUIRED = {"index": "data/index.npz", "sample": "0", "pretrained": "runs/p/pretrained.pt", "dataroot": "data/ns",
            "root": "data/kitti"}


def _commands() -> list[tuple[list[str], CommandSettings]]:
    found = []
    for module in command_modules():
        if module.NAME == "prepare":
            found += [(["prepare", "nuscenes"], module.NUSCENES), (["prepare", "semantickitti"], module.SEMANTICKITTI),
                      (["prepare", "kitti-object"], module.KITTI_OBJECT)]
        elif module.NAME != "evaluate" and getattr(module, "SETTINGS", None) is not None:
            found.append(([module.NAME], module.SETTINGS))
    found += [(["bench", module.NAME], module.SETTINGS) for module in bench_modules()]
    return found


COMMANDS = _commands()
IDS = [" ".join(argv) for argv, _ in COMMANDS]


def _required_argv(settings: CommandSettings) -> list[str]:
    argv = []
    for flag in settings.flags:
        f, _ = field_of(settings.cls, flag.key)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            argv += [flag.option_string, REQUIRED[flag.key]]
    return argv


def _resolve(argv: list[str]):
    """The settings ``slidr ARGV`` would run with (parsed and resolved, not run; the command's own required
    options may be missing)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    args.overrides = [*args.overrides, *extras]
    args.settings = args._settings.resolve(args)
    return args


def _printed(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv + ["--print-config"]) == 0
    return capsys.readouterr().out


def test_every_command_except_report_and_configs_has_settings():
    names = {module.NAME for module in command_modules() if getattr(module, "SETTINGS", None) is None
             and module.NAME != "prepare"}
    # bench: each benchmark has its own (checked below); reproduce orchestrates the packaged paper configs, each run
    # resolved through the config path (its --print-config prints them all), with paths and counts as options
    assert names == {"report", "configs", "bench", "reproduce"}
    assert all(getattr(module, "SETTINGS", None) is not None for module in bench_modules())


# --- defaults written once ------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, settings", COMMANDS, ids=IDS)
def test_without_options_the_settings_are_the_class_defaults(argv, settings):
    args = _resolve(argv + _required_argv(settings))
    if settings.default_config is None:
        required = _required_argv(settings)
        expected = settings.cls(**{option.lstrip("-"): value for option, value in zip(required[::2], required[1::2])})
    else:
        expected = load_config(settings.cls, settings.default_config)
    expected = with_changes(expected, settings.fixed)
    if settings.finalize is not None:  # probe / finetune: trainer.epochs null resolved by the paper's rule
        expected = settings.finalize(expected)
    assert args.settings == expected


def test_option_defaults_shown_in_help_come_from_the_config_class(capsys):
    with pytest.raises(SystemExit):
        main(["superpixels", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"SLIC's target number of segments (default: {SuperpixelConfig().n_segments})" in text
    assert f"processes computing in parallel (default: {SuperpixelJobConfig(index='x').workers})" in text
    assert "--index INDEX index file written by `slidr prepare` (required)" in text


# --- overrides anywhere -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--out", "DIR", "trainer.batch_size=2", "optim.lr=1e-3"],
    ["trainer.batch_size=2", "--out", "DIR", "optim.lr=1e-3"],
    ["--out", "DIR", "trainer.batch_size=2", "--resume", "optim.lr=1e-3"],
    ["--resume", "trainer.batch_size=2", "--no-progress", "optim.lr=1e-3", "--out", "DIR"],
    ["--config", "configs/pretrain/slidr_minkunet.yaml", "--out", "DIR", "trainer.batch_size=2", "optim.lr=1e-3"],
])
def test_overrides_are_accepted_before_between_and_after_options(argv):
    args = _resolve(["pretrain"] + argv)
    assert args.settings.trainer.batch_size == 2 and args.settings.optim.lr == 0.001 and args.out == "DIR"


def test_overrides_after_options_of_other_commands():
    args = _resolve(["superpixels", "--index", "i.json", "workers=3", "--method", "fh", "superpixels.n_segments=20"])
    assert (args.settings.workers, args.settings.superpixels.method, args.settings.superpixels.n_segments) == \
        (3, "fh", 20)
    args = _resolve(["probe", "--out", "o", "--pretrained", "none", "trainer.epochs=2", "--resume"])
    assert args.settings.trainer.epochs == 2 and args.settings.pretrained is None and args.settings.mode == "probe"


def test_overrides_after_a_list_option_are_not_taken_as_its_values(capsys):
    """``--lrs 0.001 0.01 KEY=VALUE``: argparse would read the override as a third learning rate."""
    import yaml

    printed = _printed(["detect-lr", "--config", "detection/detect_demo_cpu.yaml", "--out", "o", "--lrs", "0.001",
                        "0.01", "data.label_fraction=0.2", "trainer.seed=3"], capsys)
    settings = yaml.safe_load(printed)
    assert settings["data"]["label_fraction"] == 0.2 and settings["trainer"]["seed"] == 3
    parser = build_parser()
    argv = overrides_first(["detect-lr", "--lrs", "0.001", "a.b=1", "--out", "o", "c=2"], parser)
    assert argv == ["detect-lr", "a.b=1", "--lrs", "0.001", "--out", "o", "c=2"]
    assert parser.parse_known_args(argv)[0].lrs == [0.001]
    # options whose values are overrides keep them
    demo = ["demo", "--pretrain", "trainer.epochs=1", "--probe", "trainer.epochs=2"]
    assert overrides_first(demo, parser) == demo


def test_words_that_are_not_overrides_are_still_refused(capsys):
    for argv in (["pretrain", "--out", "d", "--bogus"], ["pretrain", "--out", "d", "--resume", "x=1", "--y"],
                 ["report", "r", "--names", "a", "--out", "d", "--x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
    assert main(["pretrain", "stray", "--out", "d"]) == 2  # the positional KEY=VALUE slot
    assert "override 'stray' must look like dotted.key=value" in capsys.readouterr().err


def test_an_option_and_an_override_of_one_key_are_refused(capsys):
    assert main(["superpixels", "--index", "i.json", "--workers", "2", "workers=3"]) == 2
    assert "workers is given twice: by --workers and by workers=3" in capsys.readouterr().err


# --- validation before any work ---------------------------------------------------------------------------------


def _numeric_flags():
    cases = []
    for argv, settings in COMMANDS:
        for flag in settings.flags:
            _, hint = field_of(settings.cls, flag.key)
            base = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
            base = typing.get_args(base[0]) or base  # list[int] -> int
            if base[0] in (int, float) and flag.parse is None:
                cases.append((argv, settings, flag, base[0]))
    return cases


NUMERIC = _numeric_flags()


def test_numeric_options_are_found():
    options = {(" ".join(argv), flag.option_string) for argv, _, flag, _ in NUMERIC}
    assert {("superpixels", "--workers"), ("superpixels", "--n-segments"), ("synth", "--scenes"), ("knn", "-k"),
            ("similarity", "--pixel"), ("bench sparse", "--batch-sizes"), ("bench loss", "--points")} <= options
    assert len(options) >= 30


@pytest.mark.parametrize("argv, settings, flag, kind", NUMERIC,
                         ids=[f"{' '.join(a)} {f.option_string}" for a, _, f, _ in NUMERIC])
def test_numeric_options_refuse_bad_values_before_work(argv, settings, flag, kind, capsys):
    required = _required_argv(settings)
    nargs = flag.nargs if isinstance(flag.nargs, int) else 1
    bad_values = ["-1", "abc"] + (["1.5"] if kind is int else [])
    for bad in bad_values:
        command = argv + required + [flag.option_string, *[bad] * nargs, "--print-config"]
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert f"{flag.option_string} {' '.join([bad] * nargs)}:" in err and flag.key in err, err
    # the same command with a good value runs (prints its settings)
    good = "8"
    assert main(argv + required + [flag.option_string, *[good] * nargs, "--print-config"]) == 0


@pytest.mark.parametrize("argv, option", [
    (["superpixels", "--index", "i"], "--workers"), (["superpixels", "--index", "i"], "--n-segments"),
    (["synth"], "--scenes"), (["synth"], "--frames"), (["synth"], "--workers"),
    (["knn", "--pretrained", "p"], "-k"), (["knn", "--pretrained", "p"], "--max-frames"),
    (["bench", "loss"], "--scans"), (["bench", "loss"], "--repeats"), (["bench", "data"], "--threads"),
    (["bench", "sparse"], "--batch-sizes"), (["bench", "sparse"], "--voxels"), (["bench", "synth"], "--repeats"),
    (["bench", "superpixels"], "--copies"),
])
def test_counts_refuse_zero(argv, option, capsys):
    assert main(argv + [option, "0", "--print-config"]) == 2
    assert f"{option} 0:" in capsys.readouterr().err


def test_options_written_otherwise_are_validated(capsys):
    for argv, expected in ((["synth", "--image-size", "800by450"], "--image-size 800by450: must look like"),
                           (["synth", "--image-size", "8x4"],
                            "--image-size 8x4: image_size must be [width, height] with both sides >= 64 px"),
                           (["superpixels", "--index", "i", "--shard", "4/4"], "--shard 4/4: shard 4/4: need"),
                           (["superpixels", "--index", "i", "--shard", "x"], "--shard x: shard must look like"),
                           (["similarity", "--pretrained", "p", "--point", "1", "seed=3", "pixel=[1, 2]"],
                            "give at most one query")):
        assert main(argv + ["--print-config"]) == 2
        assert expected in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the command's own integer options
        main(["bench", "step", "--steps", "0", "--print-config"])
    assert "--steps: must be >= 1, got 0" in capsys.readouterr().err


def test_a_missing_required_option_is_named(capsys):
    assert main(["superpixels", "--print-config"]) == 2
    assert "--index is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not printing: the run folder is required
        main(["pretrain", "trainer.epochs=1"])
    assert "the following arguments are required: --out" in capsys.readouterr().err


# --- --print-config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, settings", COMMANDS, ids=IDS)
def test_print_config_loads_back_to_the_same_settings(argv, settings, tmp_path, capsys):
    command = argv + _required_argv(settings)
    text = _printed(command, capsys)
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    assert load_config(settings.cls, path) == _resolve(command).settings
    if settings.config:  # given back as --config, it prints the same text
        assert _printed(argv + ["--config", str(path)], capsys) == text


def test_print_config_of_a_paper_config_with_overrides(tmp_path, capsys):
    text = _printed(["pretrain", "--config", "configs/pretrain/slidr_minkunet.yaml", "optim.lr=5e-1",
                     "trainer.epochs=3"], capsys)
    printed = yaml.safe_load(text)
    assert printed["optim"]["lr"] == 0.5 and printed["trainer"]["epochs"] == 3
    assert printed["data"]["superpixels"] == {"method": "slic", "n_segments": 150, "root": None, "source": None}
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(PretrainConfig, tmp_path / "c.yaml") == load_config(
        PretrainConfig, "pretrain/slidr_minkunet.yaml", ["trainer.epochs=3"])


def test_print_config_of_the_demo_inlines_its_sub_configs(tmp_path, capsys):
    text = _printed(["demo", "scenes=3", "--pretrain", "trainer.epochs=1", "--probe", "trainer.epochs=2"], capsys)
    printed = yaml.safe_load(text)
    assert set(printed["pretrain"]) == {"slidr", "ppkt"} and printed["scenes"] == 3
    assert printed["pretrain"]["ppkt"]["method"] == "ppkt" and printed["pretrain"]["ppkt"]["trainer"]["epochs"] == 1
    assert printed["probe"]["trainer"]["epochs"] == 2
    (tmp_path / "demo.yaml").write_text(text)
    assert _printed(["demo", "--config", str(tmp_path / "demo.yaml")], capsys) == text


def test_evaluate_prints_the_config_of_its_run_folder(tmp_path, capsys):
    cfg = load_config(DownstreamConfig, "probe_nuscenes", ["trainer.batch_size=3"])
    save_config(cfg, tmp_path / "config.yaml")
    text = _printed(["evaluate", str(tmp_path), "trainer.batch_size=5"], capsys)
    (tmp_path / "printed.yaml").write_text(text)
    assert load_config(DownstreamConfig, tmp_path / "printed.yaml") == with_changes(cfg, {"trainer.batch_size": 5})
    assert main(["evaluate", str(tmp_path / "nothing"), "--print-config"]) == 2
    assert "not a probe/finetune run folder" in capsys.readouterr().err


# --- frozen ------------------------------------------------------------------------------------------------------


def _all_config_classes():
    classes = []
    for _, settings in COMMANDS:
        for cls in config_classes(settings.cls):
            if cls not in classes:
                classes.append(cls)
    return classes


@pytest.mark.parametrize("cls", _all_config_classes(), ids=lambda cls: cls.__name__)
def test_configs_refuse_mutation(cls):
    required = {f.name: "x" for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    instance = cls(**required)
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(instance, name, getattr(instance, name))


def test_changed_copies_are_validated_and_leave_the_original():
    cfg = load_config(PretrainConfig)
    changed = with_changes(cfg, {"trainer.epochs": 3, "data.voxel.size": 0.2, "method": "ppkt"})
    assert (changed.trainer.epochs, changed.data.voxel.size, changed.method) == (3, 0.2, "ppkt")
    assert (cfg.trainer.epochs, cfg.data.voxel.size, cfg.method) == (50, 0.1, "slidr")
    with pytest.raises(ConfigError, match="trainer.epochs must be > 0|epochs must be > 0"):
        with_changes(cfg, {"trainer.epochs": 0})
    with pytest.raises(ConfigError, match="size must be > 0"):
        dataclasses.replace(cfg.data.voxel, size=-1.0)


# --- packaged configs -------------------------------------------------------------------------------------------


def test_packaged_configs_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = packaged_configs()
    assert {"pretrain/slidr_minkunet.yaml", "downstream/probe_nuscenes.yaml", "demo/demo.yaml"} <= set(names)
    for name in names:
        load_config(packaged_config_class(name), name)
    wanted = resolve_config_path("pretrain/slidr_minkunet.yaml")
    for spelling in ("configs/pretrain/slidr_minkunet.yaml", "pretrain/slidr_minkunet", "slidr_minkunet",
                     "slidr_minkunet.yaml"):
        assert resolve_config_path(spelling) == wanted
    with pytest.raises(ConfigError, match=r"config file nothing.yaml does not exist.*pretrain/slidr_minkunet.yaml"):
        load_config(PretrainConfig, "nothing.yaml")


def test_a_local_file_wins_over_the_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "configs" / "pretrain" / "slidr_minkunet.yaml"
    local.parent.mkdir(parents=True)
    local.write_text("trainer: {epochs: 2}\n")
    assert load_config(PretrainConfig, "configs/pretrain/slidr_minkunet.yaml").trainer.epochs == 2
    assert load_config(PretrainConfig, "slidr_minkunet").trainer.epochs == 50


def test_demo_sub_configs_are_typed_and_resolved_beside_the_demo_file_first(tmp_path, monkeypatch):
    demo = load_config(DemoConfig, "demo/demo.yaml")
    assert demo.pretrain["slidr"] == load_config(PretrainConfig, "pretrain/demo_cpu.yaml")
    assert demo.probe == load_config(DownstreamConfig, "downstream/probe_demo_cpu.yaml")
    assert DemoConfig() == demo  # the class defaults are the packaged demo
    (tmp_path / "probe.yaml").write_text("lovasz: true\ntrainer: {epochs: 7}\n")
    (tmp_path / "demo.yaml").write_text("pretrain: {ours: pretrain/ppkt_demo_cpu.yaml}\nprobe: probe.yaml\n")
    monkeypatch.chdir(tmp_path.parent)
    custom = load_config(DemoConfig, tmp_path / "demo.yaml", ["probe.trainer.batch_size=2"])
    assert list(custom.pretrain) == ["ours"] and custom.pretrain["ours"].method == "ppkt"
    assert custom.probe == load_config(DownstreamConfig, tmp_path / "probe.yaml", ["trainer.batch_size=2"])
    swapped = load_config(DemoConfig, None, ["probe=downstream/probe_nuscenes.yaml", "probe.trainer.epochs=3"])
    assert swapped.probe == load_config(DownstreamConfig, "probe_nuscenes", ["trainer.epochs=3"])


def test_configs_command_lists_checks_and_prints(capsys):
    assert main(["configs", "--check"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in packaged_configs())
    assert main(["configs", "slidr_minkunet"]) == 0
    assert capsys.readouterr().out == resolve_config_path("pretrain/slidr_minkunet.yaml").read_text()


# --- scientific notation: every float setting of every command ------------------------------------------------


def _float_paths(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        core = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
        if core is float:
            yield prefix + f.name, f
        elif isinstance(core, type) and dataclasses.is_dataclass(core):
            yield from _float_paths(core, prefix + f.name + ".")


def _scientific(value: float) -> str:
    """``value`` written as <integer>e<exponent>, which PyYAML reads as a string (YAML 1.1 wants a dot)."""
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = f"{'-' if sign else ''}{int(''.join(map(str, digits)))}e{exponent}"
    assert isinstance(yaml.safe_load(text), str) and float(text) == value
    return text


FLOAT_CASES = [(settings.cls, path, f) for _, settings in COMMANDS for path, f in _float_paths(settings.cls)]
FLOAT_CASES = list({(cls, path): (cls, path, f) for cls, path, f in FLOAT_CASES}.values())


# settings whose valid values depend on others: the BEV cell must divide the detection range (70.4 m x 80 m)
CONSTRAINED_VALUES = {"head.cell_size": 0.32}


def test_float_settings_are_found():
    paths = {path for _, path, _ in FLOAT_CASES}
    assert {"optim.lr", "optim.lr_head", "loss.temperature", "data.voxel.size", "trainer.limit_train_batches",
            "lr_random_init", "optim.weight_decay"} <= paths
    assert len(paths) >= 25


@pytest.mark.parametrize("cls, path, f", FLOAT_CASES, ids=[f"{c.__name__}.{p}" for c, p, _ in FLOAT_CASES])
def test_every_float_setting_takes_scientific_notation(cls, path, f, tmp_path):
    default = f.default if f.default is not dataclasses.MISSING else None
    value = 0.25 if default is None else default * 0.75 if default > 0.05 else default
    value = CONSTRAINED_VALUES.get(path, value)
    required = {f.name: "x" for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    text = _scientific(value)
    nested: dict = dict(required)
    node = nested
    *sections, leaf = path.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = "@"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(nested).replace("'@'", text))
    from_file = load_config(cls, tmp_path / "c.yaml")
    from_override = load_config(cls, None, [f"{key}={v}" for key, v in required.items()] + [f"{path}={text}"])
    for cfg in (from_file, from_override):
        leaf_value = cfg
        for part in path.split("."):
            leaf_value = getattr(leaf_value, part)
        assert leaf_value == value and isinstance(leaf_value, float)


def test_number_forms_python_reads():
    for text, value in (("1e-3", 0.001), ("1E-3", 0.001), ("5e+1", 50.0), ("2.5e-2", 0.025), (".5", 0.5),
                        ("1_0.5", 10.5), ("3", 3.0)):
        assert load_config(PretrainConfig, None, [f"optim.lr={text}"]).optim.lr == value
    with pytest.raises(ConfigError, match="optim.lr=fast: optim.lr: expected a number, got 'fast'"):
        load_config(PretrainConfig, None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="expected an integer, got 1.5"):
        load_config(PretrainConfig, None, ["trainer.epochs=1.5"])
    aspect = load_config(PretrainConfig, None, ["data.augment.crop_aspect_range=[14e-1, 2e0]"])
    assert aspect.data.augment.crop_aspect_range == [1.4, 2.0]


def test_the_issues_forms_work_as_written(tmp_path, capsys):
    """Issue "Trust" items 8-10, as the user typed them: scientific notation on the command line and in YAML,
    overrides after an option, numeric options checked before any work."""
    (tmp_path / "mine.yaml").write_text("optim:\n  lr: 1e-3\n  weight_decay: 1E-4\n")
    for argv in (["pretrain", "--config", str(tmp_path / "mine.yaml"), "--out", "DIR", "trainer.batch_size=2"],
                 ["pretrain", "--out", "DIR", "trainer.batch_size=2", "optim.lr=1e-3", "optim.weight_decay=1E-4"]):
        assert main([*argv, "--print-config"]) == 0, argv
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["optim"]["lr"] == 0.001 and printed["optim"]["weight_decay"] == 0.0001
    for argv, key, value in ((["synth", "--out", "w", "scenes=3"], "scenes", 3),
                             (["knn", "--pretrained", "p", "--out", "k", "k=5"], "k", 5),
                             (["probe", "--out", "o", "trainer.batch_size=2"], "trainer", {"batch_size": 2})):
        assert main([*argv, "--print-config"]) == 0, argv
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed[key] == value if not isinstance(value, dict) else printed[key]["batch_size"] == 2
    # numbers Python reads but ranges refuse, and integers where integers are meant: usage errors before work
    for argv, words in ((["pretrain", "--out", "d", "optim.lr=nan"], "optim.lr must be > 0, got nan"),
                        (["pretrain", "--out", "d", "optim.lr=-1e-3"], "optim.lr must be > 0, got -0.001"),
                        (["pretrain", "--out", "d", "trainer.batch_size=2.5"], "expected an integer, got 2.5"),
                        (["synth", "--out", "w", "--scenes", "1e1"], "--scenes 1e1"),
                        (["inspect", "--index", "i", "--sample", "0", "--superpixel-root", "r", "nope=1"],
                         "unknown key 'nope'")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)
    assert not any(tmp_path.iterdir()) or sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]
