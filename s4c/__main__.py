"""`python -m s4c` runs the CLI (the launcher starts its children this way)."""

from s4c.cli import main

main()
