"""URL credentials never leave through fractfs' errors, logs or status (issue 16, point 6)."""
from __future__ import annotations

import logging

import pytest

from fractfs.errors import StoreError, StoreNotFound
from fractfs.redact import redact, redact_value

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"  # AWS-like: contains "/" and "+"


@pytest.mark.parametrize("text, hidden, kept", [
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/app", ["AKIAEXAMPLE", SECRET], ["s3://***@bucket/app"]),
    ("https://user:pa55@minio.local:9000/x", ["user", "pa55"], ["https://***@minio.local:9000/x"]),
    ("http://token@host/path", ["token@"], ["http://***@host/path"]),
    ("GET https://h:9000/k?X-Amz-Signature=deadbeef&x=1 failed", ["deadbeef"], ["X-Amz-Signature=***&x=1"]),
    ("https://acct.blob/c?sv=1&sig=abcd%2F", ["abcd"], ["sig=***"]),
])
def test_credentials_are_hidden(text: str, hidden: list[str], kept: list[str]) -> None:
    out = redact(text)
    for h in hidden:
        assert h not in out
    for k in kept:
        assert k in out


@pytest.mark.parametrize("text", [
    "s3://bucket/users/ann@example.com/state.db",   # an "@" in a path, no credentials
    "/Volumes/main/apps/vol/ann@example.com",
    "checkpoint area s3://bucket/prefix: 3 snapshots",
    "key=value without a URL",
])
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_nested_values_are_redacted_and_others_kept() -> None:
    st = {"store": "s3://K:S@b/p", "n": 3, "dirs": [{"volume": "s3://K:S@b/p/data"}], "ok": True, "t": ("s3://K:S@b",)}
    assert redact_value(st) == {"store": "s3://***@b/p", "n": 3, "dirs": [{"volume": "s3://***@b/p/data"}],
                                "ok": True, "t": ("s3://***@b",)}


def test_every_fractfs_error_redacts_its_text() -> None:
    err = StoreError(f"cannot reach s3://AKIA:{SECRET}@bucket/p (endpoint http://u:pw@127.0.0.1:1)")
    assert SECRET not in str(err) and ":pw@" not in str(err) and "AKIA" not in str(err)
    assert "s3://***@bucket/p" in str(err)
    nf = StoreNotFound(f"s3://AKIA:{SECRET}@bucket/p/k")
    assert SECRET not in str(nf)


def test_the_fractfs_logger_redacts_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    import fractfs  # noqa: F401  - installs the filter on the "fractfs" logger

    log = logging.getLogger("fractfs")
    with caplog.at_level(logging.INFO, logger="fractfs"):
        log.info("store %s ready", f"s3://AKIA:{SECRET}@bucket/p")
        try:
            raise OSError(f"connect to http://u:{SECRET}@127.0.0.1:1 refused")
        except OSError:
            log.exception("checkpoint failed")
    text = caplog.text
    assert SECRET not in text and "AKIA" not in text
    assert "s3://***@bucket/p" in text and "http://***@127.0.0.1:1" in text
