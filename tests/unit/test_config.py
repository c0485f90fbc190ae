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
    ({"UMBRA_STREAM_IDLE_SECONDS": "0"}, "UMBRA_STREAM_IDLE_SECONDS"),
    ({"UMBRA_STREAM_MAX_SECONDS": "soon"}, "UMBRA_STREAM_MAX_SECONDS"),
    ({"UMBRA_TENANT_MAX_CALLS": "0"}, "UMBRA_TENANT_MAX_CALLS"),
    ({"UMBRA_TENANT_MAX_STREAMS": "1.5"}, "UMBRA_TENANT_MAX_STREAMS"),
    ({"UMBRA_MAX_STREAMS": "16"}, "UMBRA_MAX_STREAMS"),  # would leave no RPC thread of the 16 for unary calls
    ({"UMBRA_MAX_QUEUED_CALLS": "-1"}, "UMBRA_MAX_QUEUED_CALLS"),
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


def test_resource_limits_default_to_shares_of_the_rpc_threads():
    config = ServiceConfig.from_env("coordinator", BASE)
    assert (config.max_workers, config.tenant_max_calls, config.tenant_max_streams, config.max_streams,
            config.max_queued_calls) == (16, 4, 2, 8, 64)
    assert (config.stream_idle_seconds, config.stream_max_seconds) == (30.0, 900.0)
    config = ServiceConfig.from_env("coordinator", {**BASE, "UMBRA_MAX_WORKERS": "40"})
    assert (config.tenant_max_calls, config.tenant_max_streams, config.max_streams, config.max_queued_calls) == \
        (10, 2, 20, 160)
    config = ServiceConfig.from_env("coordinator", {**BASE, "UMBRA_MAX_WORKERS": "1"})
    assert (config.tenant_max_calls, config.max_streams) == (1, 1)
    config = ServiceConfig.from_env("coordinator", {**BASE, "UMBRA_STREAM_IDLE_SECONDS": "2.5",
                                                    "UMBRA_TENANT_MAX_STREAMS": "1", "UMBRA_MAX_STREAMS": "15"})
    assert (config.stream_idle_seconds, config.tenant_max_streams, config.max_streams) == (2.5, 1, 15)
