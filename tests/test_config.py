import pytest

from slidr.config import ConfigError, PretrainConfig, apply_overrides, load_config, save_config


def test_defaults_are_the_papers():
    config = load_config(PretrainConfig)
    assert config.loss.temperature == 0.07
    assert config.data.voxel.size == 0.1 and config.data.voxel.azimuth_step_deg == 1.0
    assert config.optim.lr == 0.5 and config.optim.dampening == 0.1
    assert config.data.superpixels.n_segments == 150


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: ppkt\ntrainer:\n  epochs: 3\n")
    config = load_config(PretrainConfig, path, ["trainer.batch_size=2", "data.image_size=[112, 208]",
                                                "image.weights=null", "optim.lr=1"])
    assert config.method == "ppkt" and config.trainer.epochs == 3 and config.trainer.batch_size == 2
    assert config.data.image_size == [112, 208] and config.image.weights is None
    assert isinstance(config.optim.lr, float) and config.optim.lr == 1.0


def test_misspelled_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  epohcs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'epohcs'.*did you mean 'epochs'.*valid keys"):
        load_config(PretrainConfig, path)


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="method"):
        load_config(PretrainConfig, overrides=["method=simclr"])
    with pytest.raises(ConfigError, match="trainer.epochs"):
        load_config(PretrainConfig, overrides=["trainer.epochs=0"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(PretrainConfig, overrides=["trainer.epochs=two"])
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides({}, ["trainer.epochs"])


def test_saved_config_loads_back(tmp_path):
    config = load_config(PretrainConfig, overrides=["trainer.epochs=7", "loss.use_superpixels=false"])
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(PretrainConfig, tmp_path / "resolved.yaml") == config
