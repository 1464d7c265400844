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


def test_a_partial_section_is_laid_over_the_sections_default(tmp_path):
    from slidr.config import DownstreamConfig

    # downstream data defaults to no augmentation: setting the index must not switch it back on
    assert DownstreamConfig().data.augment.enabled is False
    assert load_config(DownstreamConfig, None, ["data.index=x.json"]).data.augment.enabled is False
    path = tmp_path / "d.yaml"
    path.write_text("data: {index: x.json}\noptim: {weight_decay: 0.0}\n")
    cfg = load_config(DownstreamConfig, path)
    assert cfg.data.augment.enabled is False and cfg.optim.lr == 0.05 and cfg.data.index == "x.json"
    assert load_config(PretrainConfig, None, ["data.index=x.json"]).data.augment.enabled is True


def test_command_line_text_is_read_by_the_settings_type():
    cfg = load_config(PretrainConfig, None, ["data.train_split=00", "trainer.accelerator=1", "trainer.devices=2",
                                             "image.weights=null", "data.cameras=[CAM_FRONT]", "pairs.cache=~"])
    assert cfg.data.train_split == "00" and cfg.trainer.accelerator == "1" and cfg.trainer.devices == 2
    assert cfg.image.weights is None and cfg.data.cameras == ["CAM_FRONT"] and cfg.pairs.cache is None


def test_errors_name_the_file_or_the_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer: {epochs: 0}\n")
    with pytest.raises(ConfigError, match=r"^.*c.yaml: trainer.epochs must be > 0, got 0$"):
        load_config(PretrainConfig, path)
    with pytest.raises(ConfigError, match=r"^trainer.batch_size=-2: trainer.batch_size must be > 0, got -2$"):
        load_config(PretrainConfig, path, ["trainer.epochs=1", "trainer.batch_size=-2"])
    unknown = r"^trainer.epohcs=3: trainer: unknown key 'epohcs' \(did you mean 'epochs'\?\)"
    with pytest.raises(ConfigError, match=unknown):
        load_config(PretrainConfig, None, ["trainer.epohcs=3"])


def test_every_numeric_setting_is_range_checked():
    for override in ("trainer.num_nodes=0", "trainer.devices=0", "trainer.max_steps=0", "trainer.seed=-1",
                     "trainer.log_every_n_steps=0", "trainer.num_threads=0", "trainer.limit_train_batches=0",
                     "optim.weight_decay=-1e-4", "optim.lr_head=0", "optim.dampening=1.5", "optim.min_lr=-1",
                     "loss.queue_size=0", "loss.momentum=2", "loss.embedding_dim=0", "backbone.in_channels=0",
                     "backbone.out_channels=0", "backbone.bn_momentum=-0.1", "image.out_channels=0",
                     "data.augment.min_pairs=-1", "data.superpixels.n_segments=0", "pairs.equivalent_epochs=0",
                     "data.augment.crop_aspect_range=[0, 1]"):
        key = override.partition("=")[0]
        with pytest.raises(ConfigError, match=rf"^{override.replace('[', '.').replace(']', '.')}: {key}"):
            load_config(PretrainConfig, None, [override])
    assert load_config(PretrainConfig, None, ["trainer.max_steps=-1", "trainer.devices=-1"]).trainer.devices == -1


def test_wildcards_set_every_entry_of_a_mapping():
    from slidr.config import DemoConfig

    demo = load_config(DemoConfig, None, ["pretrain.*.trainer.epochs=1", "pretrain.ppkt.optim.lr=2e-3"])
    assert {name: cfg.trainer.epochs for name, cfg in demo.pretrain.items()} == {"slidr": 1, "ppkt": 1}
    assert demo.pretrain["ppkt"].optim.lr == 0.002 and demo.pretrain["slidr"].optim.lr == 0.001
    with pytest.raises(ConfigError, match=r"'\*' needs a mapping"):
        load_config(PretrainConfig, None, ["*.epochs=1"])


def test_a_config_file_referring_to_itself_is_refused(tmp_path):
    from slidr.config import DemoConfig

    (tmp_path / "demo.yaml").write_text("probe: probe.yaml\n")
    (tmp_path / "probe.yaml").write_text("data: {index: x}\n")
    assert load_config(DemoConfig, tmp_path / "demo.yaml").probe.data.index == "x"
    (tmp_path / "loop.yaml").write_text("world: w\nprobe: loop.yaml\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(DemoConfig, tmp_path / "loop.yaml")
