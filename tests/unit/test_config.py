from pathlib import Path

import pytest

from umbra.runtime.config import ConfigError, ServiceConfig

BASE = {"UMBRA_SERVICE_TOKEN": "s" * 20, "UMBRA_ADMIN_KEY": "a" * 20, "UMBRA_HOME": "/tmp/umbra-home"}


def test_defaults_and_secrets_stay_out_of_repr():
    config = ServiceConfig.from_env("training", BASE)
    assert (config.host, config.port) == ("127.0.0.1", 50054)
    assert config.data_dir == Path("/tmp/umbra-home/training")
    assert "s" * 20 not in repr(config) and "a" * 20 not in repr(config)
    with pytest.raises(AttributeError):
        config.port = 1  # frozen


@pytest.mark.parametrize("override, variable", [
    ({"UMBRA_SERVICE_TOKEN": "short"}, "UMBRA_SERVICE_TOKEN"),
    ({"UMBRA_TRAINING_PORT": "http"}, "UMBRA_TRAINING_PORT"),
    ({"UMBRA_TRAINING_PORT": "70000"}, "UMBRA_TRAINING_PORT"),
    ({"UMBRA_GRACE_SECONDS": "-1"}, "UMBRA_GRACE_SECONDS"),
    ({"UMBRA_MAX_MESSAGE_BYTES": "1.5"}, "UMBRA_MAX_MESSAGE_BYTES"),
    ({"UMBRA_LOG_LEVEL": "chatty"}, "UMBRA_LOG_LEVEL"),
])
def test_bad_settings_name_the_variable(override, variable):
    with pytest.raises(ConfigError, match=variable):
        ServiceConfig.from_env("training", {**BASE, **override})


def test_coordinator_needs_an_admin_key_workers_do_not():
    env = {k: v for k, v in BASE.items() if k != "UMBRA_ADMIN_KEY"}
    assert ServiceConfig.from_env("training", env).admin_key == ""
    with pytest.raises(ConfigError, match="UMBRA_ADMIN_KEY"):
        ServiceConfig.from_env("coordinator", env)


def test_unknown_service():
    with pytest.raises(ConfigError, match="unknown service"):
        ServiceConfig.from_env("billing", BASE)
