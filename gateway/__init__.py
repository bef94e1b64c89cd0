"""mailgate: an inline SMTP security gateway.

It sits where the internet delivers mail, inspects every transaction, and answers the sender only
once the message is safe: relayed and acknowledged by the delivery server, durably quarantined, or
refused with a reply the sender can act on.
"""

__version__ = "0.1.0"
