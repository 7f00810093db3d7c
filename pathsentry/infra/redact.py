"""Credentials out of anything printed or logged: URLs and free text (exception messages)
lose their ``user:password@`` part and secret-looking query parameters.

>>> redact_url("clickhouse://soc:s3cr3t@ch.internal:9440/pathsentry?secure=1&password=x")
'clickhouse://soc:***@ch.internal:9440/pathsentry?secure=1&password=***'
>>> redact_url("kafka://b1:9093,b2:9093"), redact_url("chdb:///var/chdb#soc")
('kafka://b1:9093,b2:9093', 'chdb:///var/chdb#soc')
>>> redact_text("connect to 'clickhouse://u:p@ss@h:9000/db' failed")
"connect to 'clickhouse://u:***@h:9000/db' failed"
"""

from __future__ import annotations

import re

__all__ = ["redact_text", "redact_url"]

#: ``scheme://user:password@`` (password possibly empty) anywhere in a text
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s'\"]*):(?P<pw>[^/\s'\"]*)@")
#: ``user@`` without a password is kept: it is not a secret
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|secret|token|access_key|secret_key|api_key|sasl_password)=)"
    r"(?P<val>[^&#\s'\"]*)",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """``text`` with every URL password and secret query parameter replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}***", text)


def redact_url(url: str) -> str:
    """A URL safe to print: the user stays, the password and secret parameters do not."""
    return redact_text(url)
