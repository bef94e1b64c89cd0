"""`python -m gateway` is the same as the `mailgate` command."""

from gateway.cli import main

raise SystemExit(main())
