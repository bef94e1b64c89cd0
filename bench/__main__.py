"""`python3 -m bench`: run the benchmark scenarios side by side and print the ratios."""

from bench.cli import main

raise SystemExit(main())
