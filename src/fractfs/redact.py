"""Credentials never leave the process through fractfs' own words.

A Volume URL may carry ``user:secret@`` (``s3://KEY:SECRET@bucket/p``) and ``AWS_ENDPOINT_URL`` may too; botocore
and aiohttp put the endpoint into their exception texts, which fractfs wraps into its own errors, logs and
status. Rather than trusting every place that formats a URL to remember, the few exits are filtered: the
text of every :class:`~fractfs.errors.FractfsError`, every record logged on the ``fractfs`` logger, the status
dict and the CLI's output all pass through :func:`redact`.

The rule is deliberately eager: after ``scheme://``, everything up to the first ``@`` is hidden when it holds a
``:`` (``user:password``) or no ``/`` (``user@host``). A secret containing ``/`` (AWS secrets often do) is
therefore still hidden whole; the price is that a rare path with ``:`` before an ``@`` is shown shortened.
Query parameters that carry signatures or tokens are hidden by name.
"""
from __future__ import annotations

import logging
import re
from typing import Any, TypeVar, cast

T = TypeVar("T")

MASK = "***"

# scheme://<userinfo>@ : userinfo is the shortest run up to an "@" that either holds a ":" or has no "/".
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^\s@'\"<>]*?:[^\s@'\"<>]*|[^\s@/'\"<>]+)@")
# ?X-Amz-Signature=...&token=... (presigned URLs, SAS tokens): hide the value, keep the name
_SECRET_PARAMS = re.compile(
    r"(?P<name>[?&](?:X-Amz-(?:Signature|Credential|Security-Token)|sig|signature|token|access_token|"
    r"password|secret)=)[^&\s'\"<>]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with URL credentials and secret query values replaced by ``***``."""
    if "://" not in text and "=" not in text:  # the common case: nothing to look at
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _SECRET_PARAMS.sub(lambda m: f"{m.group('name')}{MASK}", text)


def redact_value(value: T) -> T:
    """Every string inside ``value`` (nested dicts, lists, tuples) redacted; other values unchanged."""
    out: Any = value
    if isinstance(value, str):
        out = redact(value)
    elif isinstance(value, dict):
        out = {k: redact_value(v) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        out = type(value)(redact_value(v) for v in value)
    return cast(T, out)


class RedactingFilter(logging.Filter):
    """Installed on the ``fractfs`` logger: a record's message and traceback text are redacted before any
    handler formats them (handlers reuse ``record.exc_text`` once it is set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
