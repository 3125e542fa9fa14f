"""kpcap.envconfig: each reader's value, default, and error naming the variable and what it allows."""

from __future__ import annotations

import pytest

from kpcap import envconfig
from kpcap.envconfig import EnvError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400),
        ("90m", 5400),
        ("45s", 45),
        ("1h30m", 5400),
        ("2h0m5s", 7205),
        ("3600", 3600),
        ("1.5", 1.5),
        (" 30s ", 30),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert envconfig.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1d", "h", "-5", "5 m", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        envconfig.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("128Mi", 128 << 20),
        ("1Gi", 1 << 30),
        ("500M", 500_000_000),
        ("1.5Ki", 1536),
        ("2k", 2000),
        ("100m", 1),  # a fraction of a byte rounds up, as Kubernetes does
    ],
)
def test_quantities(text: str, size: int) -> None:
    assert envconfig.parse_quantity(text) == size


@pytest.mark.parametrize("text", ["", "lots", "12Q", "Mi"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="not a byte quantity"):
        envconfig.parse_quantity(text)


def test_unset_and_blank_are_the_default() -> None:
    for env in ({}, {"X": ""}, {"X": "  "}):
        assert envconfig.optional(env, "X") is None
        assert envconfig.string(env, "X", default="d") == "d"
        assert envconfig.integer(env, "X", default=3, low=1, high=5) == 3
        assert envconfig.number(env, "X", default=0.5, low=0, high=1) == 0.5
        assert envconfig.choice(env, "X", default="a", allowed=("a", "b")) == "a"
        assert envconfig.boolean(env, "X", default=True) is True
        assert envconfig.duration(env, "X", default=60) == 60
        assert envconfig.quantity(env, "X", default=1024) == 1024
        assert envconfig.ip_address(env, "X", default=None, what="an address") is None


def test_values() -> None:
    env = {
        "S": " text ",
        "I": "42",
        "F": "0.25",
        "C": "Ignore",
        "B": "FALSE",
        "D": "5m",
        "Q": "64Mi",
        "A": "::1",
    }
    assert envconfig.string(env, "S", default="") == "text"
    assert envconfig.required(env, "S", what="a text") == "text"
    assert envconfig.integer(env, "I", default=0, low=1, high=65535) == 42
    assert envconfig.number(env, "F", default=1, low=0, high=1) == 0.25
    assert envconfig.choice(env, "C", default="Fail", allowed=("Fail", "Ignore")) == "Ignore"
    assert envconfig.boolean(env, "B", default=True) is False
    assert envconfig.duration(env, "D", default=0, low=1, high=3600) == 300
    assert envconfig.quantity(env, "Q", default=0, low=1) == 64 << 20
    assert envconfig.ip_address(env, "A", default=None, what="an address") == "::1"


@pytest.mark.parametrize(("text", "value"), [("true", True), ("Yes", True), ("1", True), ("off", False)])
def test_booleans(text: str, value: bool) -> None:
    assert envconfig.boolean({"B": text}, "B", default=not value) is value


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (
            lambda env: envconfig.required(env, "V", what="the node's name"),
            r"^V: required \(the node's name\)$",
        ),
        (
            lambda env: envconfig.integer(env, "V", default=1, low=1, high=65535, what="the port"),
            r"^V: must be an integer in 1\.\.65535 \(the port\), got 'bad'$",
        ),
        (
            lambda env: envconfig.number(env, "V", default=1, low=0, high=1),
            r"^V: must be a number in 0\.\.1, got 'bad'$",
        ),
        (
            lambda env: envconfig.choice(env, "V", default="Fail", allowed=("Fail", "Ignore")),
            r"^V: must be one of Fail, Ignore, got 'bad'$",
        ),
        (lambda env: envconfig.boolean(env, "V", default=True), r"^V: must be true or false, got 'bad'$"),
        (
            lambda env: envconfig.duration(env, "V", default=1, allowed="1s..1h"),
            r"^V: not a duration: 'bad' .*; allowed: 1s\.\.1h$",
        ),
        (
            lambda env: envconfig.quantity(env, "V", default=1, allowed="1..1024 bytes"),
            r"^V: not a byte quantity: 'bad' .*; allowed: 1\.\.1024 bytes$",
        ),
        (
            lambda env: envconfig.ip_address(env, "V", default=None, what="an IP address to listen on"),
            r"^V: must be an IP address to listen on, got 'bad'$",
        ),
    ],
)
def test_bad_values_name_the_variable_and_what_it_allows(read: object, message: str) -> None:
    env = {"V": "bad"} if "required" not in message else {}
    with pytest.raises(EnvError, match=message) as raised:
        read(env)  # type: ignore[operator]
    assert raised.value.variable == "V"


def test_out_of_range() -> None:
    with pytest.raises(EnvError, match=r"^P: must be in 1\.\.65535 \(the port\), got 0$"):
        envconfig.integer({"P": "0"}, "P", default=1, low=1, high=65535, what="the port")
    with pytest.raises(EnvError, match=r"^F: must be in 0\.\.1, got 2$"):
        envconfig.number({"F": "2"}, "F", default=1, low=0, high=1)
    with pytest.raises(EnvError, match=r"^F: must be a number"):
        envconfig.number({"F": "nan"}, "F", default=1, low=0, high=1)
    with pytest.raises(EnvError, match=r"^D: must be in 1\.\.3600 s, got 7200$"):
        envconfig.duration({"D": "2h"}, "D", default=1, low=1, high=3600)
    with pytest.raises(EnvError, match=r"^Q: must be in 1\.\.1024 bytes, got 2048$"):
        envconfig.quantity({"Q": "2Ki"}, "Q", default=1, low=1, high=1024)
    with pytest.raises(EnvError, match=r"^Q: must be in 1\.\. bytes \(at least a byte\), got -1$"):
        envconfig.quantity({"Q": "-1"}, "Q", default=1, low=1, allowed="at least a byte")
