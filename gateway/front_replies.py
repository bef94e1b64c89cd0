"""The replies the SMTP front gives to input it refuses, named once (README "What the front
refuses" lists them with their reasons).

Each is an answer to the client's input, never an internal error: a 451 with a traceback for a
NUL in an address told the client to retry what can never succeed and wrote 2 KB of log for a
29-byte command.
"""

from __future__ import annotations

from gateway.verdict import SmtpReply

# -- commands ------------------------------------------------------------------------------------
CONTROL_CHARACTER = SmtpReply(501, "5.5.2", "Syntax error: control character in command")
BAD_PARAMETER = SmtpReply(501, "5.5.4", "Syntax error in parameters")
UNCLOSED_ADDRESS = SmtpReply(501, "5.1.7", "Syntax error: address without closing >")
INVALID_UTF8 = SmtpReply(501, "5.6.7", "Syntax error: invalid UTF-8")
NEEDS_SMTPUTF8 = SmtpReply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
NO_POSTMASTER_DOMAIN = SmtpReply(550, "5.1.1", "No postmaster domain configured here")
TLS_ALREADY_ACTIVE = SmtpReply(554, "5.5.1", "Error: TLS already active")
TOO_MANY_ERRORS = SmtpReply(421, "4.7.0", "Error: too many errors, closing connection")

# -- DATA ----------------------------------------------------------------------------------------
MESSAGE_TOO_BIG = SmtpReply(552, "5.3.4", "Error: too much mail data")
HEADER_TOO_BIG = SmtpReply(552, "5.3.4", "Error: header section too large")
LINE_TOO_LONG = SmtpReply(500, "5.5.2", "Line too long (see RFC5321 4.5.3.1.6)")
DATA_AFTER_REFUSAL = SmtpReply(421, "4.7.0", "Error: too much data after refusal, closing")
