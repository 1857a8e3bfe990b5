"""Settings declared once: config keys, defaults, checks, the command's options, the reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

import flask_signal
from flask_signal import Signal, cli, settings
from flask_signal.settings import DEFAULTS, Settings


def test_defaults_come_from_the_declarations() -> None:
    declared = {item.name for item in dataclasses.fields(Settings)}
    assert set(DEFAULTS) == declared
    assert flask_signal.DEFAULTS == DEFAULTS
    built = Settings()
    assert built.limit == 10 * 1024
    assert built.url_prefix == "/signal"
    assert built.broker_options == {} and built.headers == {}


def test_every_setting_has_a_doc_and_a_check() -> None:
    for item in dataclasses.fields(Settings):
        assert item.metadata["doc"], item.name
        assert item.metadata["check"] is not None, item.name


def test_arguments_over_config_over_defaults() -> None:
    app = Flask("t")
    app.config.update(SIGNAL_LIMIT="1kb", SIGNAL_HISTORY_SIZE=3, SIGNAL_URL_PREFIX="/rtc")
    Signal(app, history_size=9)
    resolved: Settings = app.extensions["signal_state"].settings
    assert (resolved.limit, resolved.history_size, resolved.url_prefix) == (1024, 9, "/rtc")
    assert resolved.queue_size == DEFAULTS["queue_size"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SIGNAL_LIMIT", "lots"),
        ("SIGNAL_QUEUE_SIZE", 0),
        ("SIGNAL_HISTORY_SIZE", -1),
        ("SIGNAL_MAX_CLIENTS", True),
        ("SIGNAL_RETRY_AFTER", "5"),
        ("SIGNAL_RETRY", -5),
        ("SIGNAL_PING_INTERVAL", -1),
        ("SIGNAL_CREATE_STATUS", 204),
        ("SIGNAL_FAST_PATH", "yes"),
        ("SIGNAL_DIRECT_WRITES", 1),
        ("SIGNAL_LOST_EVENT", "a\nb"),
        ("SIGNAL_HEADERS", {"X-A": "b\r\nc"}),
        ("SIGNAL_CORS", 3),
        ("SIGNAL_PUBLISH_AUTH", "nope"),
        ("SIGNAL_URL_PREFIX", "/a b"),
    ],
)
def test_a_bad_value_is_a_value_error_naming_its_key(key: str, value: Any) -> None:
    app = Flask("t")
    app.config[key] = value
    with pytest.raises(ValueError, match=f"^{key}: "):
        Signal(app)


def test_unknown_argument() -> None:
    with pytest.raises(TypeError, match="unknown Signal settings: nope"):
        Signal(nope=1)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().limit = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Settings(headers={"A": "b"}).headers["A"] = "c"  # type: ignore[index]


def cli_prefix(value: str) -> str | None:
    """What the command makes of ``--prefix value``; None if it refuses it."""
    parser = cli.build_parser()
    args = parser.parse_args(["--prefix", value])
    try:
        return str(cli.setting_values(parser, args)["url_prefix"])
    except SystemExit:
        return None


def config_prefix(value: str) -> str | None:
    try:
        return Settings(url_prefix=value).url_prefix
    except ValueError:
        return None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("/", ""),
        ("/hub", "/hub"),
        ("/hub/", "/hub"),
        ("hub", "/hub"),
        ("/a/b", "/a/b"),
        ("/a b", None),
        ("/<x>", None),
        ("/a?b", None),
    ],
)
def test_the_command_checks_prefix_as_the_config_key(value: str, expected: str | None) -> None:
    assert config_prefix(value) == expected
    assert cli_prefix(value) == expected


@given(st.text(max_size=20))
def test_prefix_checks_agree_on_any_text(value: str) -> None:
    if value.startswith("-"):
        value = "/" + value  # argparse would take it for an option
    assert cli_prefix(value) == config_prefix(value)


def test_the_command_has_an_option_for_each_declared_cli_form() -> None:
    parser = cli.build_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    declared = settings.options()
    assert {"url_prefix", "limit", "cors", "ping_interval", "broker_url"} <= {
        name for name, _ in declared
    }
    for _, option in declared:
        assert set(option.flags) <= flags
    # The command's defaults: the hub at the root, CORS open, else the setting's.
    args = parser.parse_args([])
    values = cli.setting_values(parser, args)
    assert values["url_prefix"] == "" and values["cors"] == "*"
    assert values["limit"] == Settings().limit


def test_the_command_parses_its_options_into_settings() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["--cors", "https://a.example, https://b.example", "--ping", "2.5", "--max-clients", "3"]
    )
    values = cli.setting_values(parser, args)
    assert values["cors"] == ("https://a.example", "https://b.example")
    assert values["ping_interval"] == 2.5
    assert values["max_clients"] == 3
    assert cli.setting_values(parser, parser.parse_args(["--cors", ""]))["cors"] is None


def test_a_bad_option_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    for argv in (["--queue-size", "x"], ["--retry-after", "-1"]):
        flag = argv[0]
        with pytest.raises(SystemExit):
            cli.setting_values(parser, parser.parse_args(argv))
        assert f"error: {flag}: " in capsys.readouterr().err


def test_reference_lists_every_key() -> None:
    table = settings.reference()
    for name in DEFAULTS:
        assert f"`{settings.key(name)}`" in table
    assert "`--prefix`" in table


def test_the_docs_page_carries_the_reference() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
    assert settings.reference() in page.read_text(), "regenerate with settings.reference()"
