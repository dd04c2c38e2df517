"""`python -m blu` is the `blu` command."""

from .cli import main

raise SystemExit(main())
