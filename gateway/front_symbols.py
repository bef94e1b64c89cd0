"""The symbols the SMTP front finds itself, beside the plugins' own.

These are not inspections of content but facts of the SMTP session: a TLS requirement that the
client has not met, or DATA with a bare CR, LF or a NUL. The session turns each into a finding
and policy decides what it means (rules/actions.toml: forced actions and their replies, with
rules/tls.toml `require_tls.action` for the two domain requirements), so a refusal is decided
in one place, like every other. They are declared here, once, and registered with the Registry
so `mailgate check` asks for their scores like any plugin's.
"""

from __future__ import annotations

from collections.abc import Mapping

FRONT_OWNER = "smtp"

TLS_REQUIRED_CLIENT = "SMTP_TLS_REQUIRED_CLIENT"
TLS_REQUIRED_SENDER = "SMTP_TLS_REQUIRED_SENDER"
TLS_REQUIRED_RECIPIENT = "SMTP_TLS_REQUIRED_RECIPIENT"
REQUIRETLS_WITHOUT_TLS = "SMTP_REQUIRETLS_WITHOUT_TLS"
REQUIRETLS_UNVERIFIED_DELIVERY = "SMTP_REQUIRETLS_UNVERIFIED_DELIVERY"
BARE_LINE_ENDING = "SMTP_BARE_LINE_ENDING"
NUL_CHARACTER = "SMTP_NUL_CHARACTER"

# rules/tls.toml `require_tls.action` (tempfail or reject) is the forced action of these two.
TLS_DOMAIN_SYMBOLS = (TLS_REQUIRED_SENDER, TLS_REQUIRED_RECIPIENT)

FRONT_SYMBOLS: Mapping[str, str] = {
    TLS_REQUIRED_CLIENT: "rules/tls.toml requires STARTTLS of this client (all, client_networks)"
    " and it has not used it: every command but EHLO, STARTTLS, NOOP and QUIT is refused",
    TLS_REQUIRED_SENDER: "rules/tls.toml requires TLS for the envelope sender's domain",
    TLS_REQUIRED_RECIPIENT: "rules/tls.toml requires TLS for the recipient's domain",
    REQUIRETLS_WITHOUT_TLS: "MAIL FROM asks for REQUIRETLS (RFC 8689) on a connection without TLS",
    REQUIRETLS_UNVERIFIED_DELIVERY: "MAIL FROM asks for REQUIRETLS, but TLS to the delivery"
    " server is not verified ([delivery] has no tls_ca_file or tls_fingerprints)",
    BARE_LINE_ENDING: "DATA has a bare CR or LF (RFC 5321 2.3.8), the stuff of SMTP smuggling"
    " (found with limits.bare_line_endings = reject)",
    NUL_CHARACTER: "DATA has a NUL character (RFC 5321 2.3.8): CRLF NUL . CRLF smuggles too"
    " (found with limits.bare_line_endings = reject)",
}
