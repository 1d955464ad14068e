"""The worker's argument parser: every numeric flag is range-checked by argparse (exit 2, one line),
and the bearer token comes from ``$DUALCALL_TOKEN`` (``$DUALCALL_AUTH_TOKEN`` still read, with a warning)."""

from __future__ import annotations

import pytest

from workers import __version__
from workers.__main__ import build_parser, main, settings_from_args

#: (engine, flag, values argparse must refuse, a value it must accept)
NUMERIC_FLAGS = [
    ("mock", "--port", ["-1", "65536", "70000", "8e3", "x"], "65535"),
    ("mock", "--ttl-s", ["0", "-1", "nan", "inf", "x"], "0.5"),
    ("mock", "--queue-limit", ["-1", "1.5", "x"], "0"),
    ("mock", "--keepalive-s", ["0", "-2", "nan", "-inf"], "0.1"),
    ("mock", "--max-tokens-cap", ["0", "-1", "x"], "1"),
    ("mock", "--max-body-bytes", ["0", "-1", "1e6"], "1024"),
    ("mock", "--token-delay-ms", ["-5", "-0.1", "nan", "inf", "x"], "0"),
    ("mock", "--fail-after", ["-1", "x"], "0"),
    ("mock", "--concurrency", ["0", "-3", "x"], "1"),
    ("legacy", "--token-delay-ms", ["-5", "nan"], "2.5"),
    ("exllamav2", "--max-seq-len", ["0", "-1", "x"], "1"),
]


def _required(engine: str) -> list[str]:
    return ["--model", "/models/m"] if engine == "exllamav2" else []


@pytest.mark.parametrize(
    "engine,flag,bad",
    [(engine, flag, bad) for engine, flag, bads, _ in NUMERIC_FLAGS for bad in bads],
)
def test_out_of_range_numeric_flags_are_argparse_errors(
    engine: str, flag: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([engine, *_required(engine), f"{flag}={bad}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    assert f"argument {flag}:" in error_lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("engine,flag,good", [(engine, flag, good) for engine, flag, _, good in NUMERIC_FLAGS])
def test_in_range_numeric_flags_are_accepted(engine: str, flag: str, good: str) -> None:
    args = build_parser().parse_args([engine, *_required(engine), flag, good])
    assert float(getattr(args, flag.lstrip("-").replace("-", "_"))) == float(good)


def test_version_comes_from_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"dualcall-worker {version('dualcall')}"
    assert __version__ == version("dualcall")


def test_access_log_is_on_by_default_and_can_be_turned_off() -> None:
    assert build_parser().parse_args(["mock"]).access_log is True
    assert build_parser().parse_args(["mock", "--no-access-log"]).access_log is False
    assert build_parser().parse_args(["mock"]).log_format == "text"
    assert build_parser().parse_args(["mock", "--log-format", "json"]).log_format == "json"


# -- token from the environment ----------------------------------------------------------------


def _auth_token(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> str | None:
    """The token main() would configure: run main() up to the point where it binds, then stop."""
    captured: dict[str, str | None] = {}

    def stop_at_bind(host: str, port: int) -> object:
        raise _Bound

    class _Bound(Exception):
        pass

    import workers.__main__ as cli
    from workers import server

    real_settings = cli.settings_from_args

    def record(args: object) -> object:
        settings = real_settings(args)  # type: ignore[arg-type]
        captured["token"] = settings.auth_token
        return settings

    monkeypatch.setattr(cli, "settings_from_args", record)
    monkeypatch.setattr(server, "bind", stop_at_bind)
    with pytest.raises(_Bound):
        main(argv)
    return captured["token"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("DUALCALL_TOKEN", raising=False)
    monkeypatch.delenv("DUALCALL_AUTH_TOKEN", raising=False)
    return monkeypatch


def test_token_from_dualcall_token(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("DUALCALL_TOKEN", "s3cret")
    assert _auth_token(clean_env, ["mock"]) == "s3cret"
    assert "deprecated" not in capsys.readouterr().err


def test_deprecated_auth_token_variable_still_works_with_a_warning(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("DUALCALL_AUTH_TOKEN", "tok-0ld-7")
    assert _auth_token(clean_env, ["mock"]) == "tok-0ld-7"
    err = capsys.readouterr().err
    assert "WARNING" in err
    assert "$DUALCALL_AUTH_TOKEN is deprecated" in err
    assert "$DUALCALL_TOKEN" in err
    assert "tok-0ld-7" not in err  # the token itself is never logged


def test_dualcall_token_wins_over_the_deprecated_name(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("DUALCALL_TOKEN", "new")
    clean_env.setenv("DUALCALL_AUTH_TOKEN", "old")
    assert _auth_token(clean_env, ["mock"]) == "new"
    assert "ignored" in capsys.readouterr().err


def test_flag_wins_over_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DUALCALL_TOKEN", "env")
    assert _auth_token(clean_env, ["mock", "--auth-token", "flag"]) == "flag"


def test_no_token_means_auth_off(clean_env: pytest.MonkeyPatch) -> None:
    assert _auth_token(clean_env, ["mock"]) is None
    assert settings_from_args(build_parser().parse_args(["mock"])).auth_token is None
