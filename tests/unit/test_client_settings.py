import pytest

from umbra.client.settings import ClientSettings


def test_environment_wins_over_the_config_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('endpoint = "umbra.example.org:443"\napi_key = "from-file"\n')
    from_file = ClientSettings.load({"UMBRA_CONFIG": str(config)})
    assert (from_file.endpoint, from_file.api_key) == ("umbra.example.org:443", "from-file")
    from_env = ClientSettings.load({"UMBRA_CONFIG": str(config), "UMBRA_API_KEY": "from-env"})
    assert from_env.api_key == "from-env" and "from-env" not in repr(from_env)


def test_defaults_without_a_file(tmp_path):
    settings = ClientSettings.load({"UMBRA_CONFIG": str(tmp_path / "absent.toml")})
    assert settings.endpoint == "127.0.0.1:50051" and settings.api_key == ""


def test_a_broken_file_is_named(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("endpoint = ")
    with pytest.raises(ValueError, match="config.toml"):
        ClientSettings.load({"UMBRA_CONFIG": str(config)})
