from services.core.settings import Settings


def test_settings_read_upper_cased_environment_variables() -> None:
    s = Settings.from_env({"DATABASE_URL": "postgresql://x/y", "PORT": "9000", "LOG_JSON": "0"})
    assert s.database_url == "postgresql://x/y"
    assert s.port == 9000
    assert s.log_json is False


def test_overrides_win_over_the_environment() -> None:
    s = Settings.from_env({"PORT": "9000"}, port=7000)
    assert s.port == 7000
