import pytest

from services.cli import main


def test_a_malformed_setting_is_a_clear_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "invalid setting" in err and "$.port" in err


def test_bench_is_listed_and_passes_names_and_options_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "bench" in capsys.readouterr().out
    assert main(["bench", "--help"]) == 0
    assert "benchmarks: append" in capsys.readouterr().out
    # an unknown name reaches `python -m bench`, which refuses it by name
    assert main(["bench", "no_such_bench", "--rows", "3"]) == 2
    assert "'no_such_bench'" in capsys.readouterr().err
