"""Syntax checks of SMTP command arguments that aiosmtpd leaves to its caller.

aiosmtpd decodes an argument as UTF-8 with surrogate escapes, passes a NUL or a bare CR on to
the hooks, reads `MAIL FROM:<a@b` as if the `>` were there, and takes `SIZE=²` for a number
(str.isdigit) until int() raises. Each of these is a syntax error of the client's: it gets a
5xx here, before aiosmtpd or a hook sees the command (Postfix answers 501 or 500 alike).
"""

from __future__ import annotations

import re

from gateway import front_replies
from gateway.verdict import SmtpReply

# C0 controls and DEL: never part of a command argument (RFC 5321 4.1.2 is printable US-ASCII,
# RFC 6531 adds UTF-8, neither any control).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A surrogate is how aiosmtpd's surrogateescape decoding keeps a byte that is not UTF-8.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# "<" path ">" with quoted local parts (which may hold "<" or ">") read as one unit.
_PATH = re.compile(r'<(?:[^<>"\\]|\\.|"(?:[^"\\]|\\.)*")*>')
# RFC 5321 4.1.2: esmtp-keyword and esmtp-value, ASCII only (RFC 1869).
_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e]+)?")


def argument_problem(arg: str | None) -> SmtpReply | None:
    """A control character or invalid UTF-8 anywhere in a command's argument."""
    if not arg:
        return None
    if _CONTROL.search(arg):
        return front_replies.CONTROL_CHARACTER
    if _SURROGATE.search(arg):
        return front_replies.INVALID_UTF8
    return None


def path_problem(arg: str | None, keyword: str, smtputf8: bool | None) -> SmtpReply | None:
    """`FROM:<path> params` or `TO:<path> params`: a `<` must be closed, parameters must be
    ASCII keywords, and a non-ASCII address needs SMTPUTF8 (RFC 6531 3.4). `smtputf8` None: read
    it from the parameters (MAIL); otherwise the transaction's (RCPT)."""
    if not arg or arg[: len(keyword)].upper() != keyword:
        return None  # aiosmtpd's own 501 syntax reply
    rest = arg[len(keyword) :].lstrip()
    if rest.startswith("<"):
        match = _PATH.match(rest)
        if match is None:
            return front_replies.UNCLOSED_ADDRESS
        address, params = match.group(0)[1:-1], rest[match.end() :]
        if params and not params[0].isspace():
            return front_replies.UNCLOSED_ADDRESS  # "<a@b>x": not one path
    else:
        address, _, params = rest.partition(" ")
    words = params.split()
    if any(not _PARAM.fullmatch(word) for word in words):
        return front_replies.BAD_PARAMETER
    if smtputf8 is None:
        smtputf8 = any(word.upper() == "SMTPUTF8" for word in words)
    if not address.isascii() and not smtputf8:
        return front_replies.NEEDS_SMTPUTF8
    return None


def size_problem(value: str | bool) -> bool:
    """SIZE=n with n ASCII digits only: str.isdigit takes "²", and int() then raises."""
    return not isinstance(value, str) or not (value.isascii() and value.isdigit())
