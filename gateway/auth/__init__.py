"""Sender authentication engines: SPF, DKIM, ARC, DMARC, Authentication-Results, auth policy.

The plugins in gateway.plugins are thin over these; each engine runs over the one async resolver.
"""
