"""The documented configuration template is valid, section by section, for every model that reads it."""
from pathlib import Path

from cislaves import clouds, config
from cislaves.ci.settings import ci_settings, gerrit_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "segredos" / "cislaves.yaml.example"


def test_the_example_configuration_validates_everywhere():
    cfg = config.load(EXAMPLE, environ={})
    assert cfg.defaults.cloud == "local" and cfg.ci_user.name == "jenkins"
    for name in clouds.names():
        cls = clouds.driver_class(name)
        settings = cfg.cloud_settings(name, cls.Settings)
        assert settings is not None
    assert gerrit_settings(cfg).port == 29418
    assert ci_settings(cfg).workers == 2


def test_quickstart_configuration_is_valid():
    cfg = config.load(EXAMPLE.parent.parent / "examples" / "quickstart.yaml", environ={})
    assert cfg.provision.package_set == "minimal"
