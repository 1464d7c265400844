"""Registries: registering, lookup, errors, lazy homes, and config fields that name registered entries."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from slidr.config import ConfigError, DownstreamConfig, PretrainConfig, load_config
from slidr.errors import SlidrError
from slidr.registry import Registry, RegistryName, expand_names, registry


@pytest.fixture(scope="module")
def widgets(tmp_path_factory):
    """A registry whose home package (written here) registers 'alpha' and 'beta'; a private module must not load."""
    root = tmp_path_factory.mktemp("plugins")
    package = root / "widget_home"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("alpha", "beta"):
        (package / f"{name}.py").write_text(textwrap.dedent(f"""
            from slidr.registry import registry

            @registry("test_widget").register(size=len({name!r}))
            def {name}(scale=1):
                return ("{name}", scale)
            """))
    (package / "_private.py").write_text("raise RuntimeError('a private module of a home must not be imported')")
    sys.path.insert(0, str(root))
    try:
        yield Registry("test_widget", home="widget_home")
    finally:
        sys.path.remove(str(root))


def test_home_is_imported_on_first_lookup_and_entries_build(widgets):
    assert "widget_home.alpha" not in sys.modules  # nothing imported before a lookup
    assert widgets.names() == ("alpha", "beta")
    assert "alpha" in widgets and "gamma" not in widgets and len(widgets) == 2
    assert widgets.build("beta", scale=3) == ("beta", 3)
    assert widgets.entry("alpha").metadata["size"] == 5
    assert registry("test_widget") is widgets


def test_decorator_names_and_duplicates(widgets):
    @widgets.register()
    def gamma():
        return "gamma"

    try:
        assert widgets.get("gamma") is gamma  # the decorator returns the function unchanged, named after it
        widgets.register("delta", obj=len)
        assert widgets.build("delta", [1, 2]) == 2
        with pytest.raises(SlidrError, match=r"test_widget 'gamma' is registered twice: by .*gamma and by .*len"):
            widgets.register("gamma", obj=len)
        assert widgets.get("gamma") is gamma  # the first entry stays
    finally:
        widgets.unregister("gamma")
        widgets.unregister("delta")
    assert widgets.names() == ("alpha", "beta")


def test_unknown_name_lists_the_registered_ones(widgets):
    with pytest.raises(ConfigError) as error:
        widgets.get("alpah", where="widget.name")
    assert str(error.value) == "widget.name: 'alpah' is not one of 'alpha', 'beta' (did you mean 'alpha'?)"
    with pytest.raises(ConfigError, match=r"^test_widget: 'zzz' is not one of 'alpha', 'beta'$"):
        widgets.get("zzz")
    with pytest.raises(SlidrError, match="a registry of kind 'test_widget' exists already"):
        Registry("test_widget")
    with pytest.raises(SlidrError, match="no registry of kind 'nothing'"):
        registry("nothing")


def test_registry_name_check_and_help_expansion(widgets):
    assert RegistryName("test_widget").check("beta", "x") == "beta"
    with pytest.raises(ConfigError, match=r"^x: 3 is not one of 'alpha', 'beta'$"):
        RegistryName("test_widget").check(3, "x")
    assert expand_names("one of {names:test_widget}.") == "one of alpha, beta."


@pytest.mark.parametrize("field, kind, wrong, close", [
    ("method", "method", "slidar", "slidr"),
    ("backbone.name", "backbone", "minkunet35", "minkunet34"),
    ("image.encoder", "image_encoder", "resnet05", "resnet50"),
    ("optim.optimizer", "optimizer", "adamw2", "adamw"),
])
def test_config_fields_take_their_values_from_the_registries(field, kind, wrong, close):
    names = registry(kind).names()
    assert close in names
    with pytest.raises(ConfigError) as error:
        load_config(PretrainConfig, None, [f"{field}={wrong}"])
    listed = ", ".join(map(repr, names))
    assert str(error.value) == f"{field}: {wrong!r} is not one of {listed} (did you mean {close!r}?)"
    for name in names:  # every registered name is accepted
        cfg = load_config(PretrainConfig, None, [f"{field}={name}"])
        section, _, attribute = field.rpartition(".")
        assert getattr(getattr(cfg, section) if section else cfg, attribute) == name


def test_a_registered_name_becomes_a_valid_config_value():
    backbones = registry("backbone")

    @backbones.register("unet_for_this_test")
    def build(cfg):
        raise AssertionError("not built here")

    try:
        cfg = load_config(DownstreamConfig, None, ["backbone.name=unet_for_this_test"])
        assert cfg.backbone.name == "unet_for_this_test"
    finally:
        backbones.unregister("unet_for_this_test")
    with pytest.raises(ConfigError, match="unet_for_this_test"):
        load_config(DownstreamConfig, None, ["backbone.name=unet_for_this_test"])


def test_shipped_registries():
    from slidr.engine.module import PretrainModule

    methods = registry("method")
    assert methods.names() == ("depthcontrast", "pointcontrast", "ppkt", "scalr", "slidr", "stslidr")
    assert all(issubclass(methods.get(name), PretrainModule) for name in methods.names())
    assert registry("optimizer").names() == ("adam", "adamw", "sgd")
    assert {"minkunet34", "minkunet14_half"} <= set(registry("backbone").names())
    assert {"resnet50", "resnet18", "vit_small", "convnet_small"} <= set(registry("image_encoder").names())


def test_checking_downstream_names_does_not_load_lightning():
    """Backbone and optimizer names are checked without importing the training stack (the engine's __init__
    imports nothing); only method names need the methods, hence Lightning."""
    code = ("import sys; from slidr.config import DownstreamConfig, load_config; "
            "load_config(DownstreamConfig, None, ['backbone.name=minkunet14', 'optim.optimizer=adamw']); "
            "print('lightning' in sys.modules, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_pretrain_help_lists_the_registered_names(capsys):
    from slidr.cli.main import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "method: depthcontrast, pointcontrast, ppkt, scalr, slidr, stslidr" in out
    assert "optim.optimizer: adam, adamw, sgd" in out
