"""Benchmark harness for mailgate: `python3 -m bench` (not part of the test run).

One run measures several scenarios side by side on the same message mix and reports ratios:

- direct: the load generator delivers straight to the sink (the ceiling);
- pass-through: the gateway with an empty plugin chain relays to the sink (our floor);
- full chain: the gateway with every built-in plugin relays to the sink.

The sink, a small DNS server for the checks that need one (SPF), and each gateway are separate
processes, so the CPU each one uses is measured on its own (from /proc); the load generator is an
asyncio client in the bench process. The message mix is a seeded sample of the SpamAssassin
corpus. Everything runs on loopback, is bounded in message count and time, and stops by itself.

Modules: cli (options, orchestration, printing), corpus (the message mix), load (the load
generator), procs (child processes, /proc readings, gateway configs), report (summaries, ratios,
the table), sink (the delivery sink), dnsd (the DNS server).
"""
