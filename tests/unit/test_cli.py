import pytest

from services.cli import main


def test_a_malformed_setting_is_a_clear_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "invalid setting" in err and "$.port" in err
