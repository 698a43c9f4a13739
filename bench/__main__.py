"""`python -m bench ...` from the repository root: see bench/cli.py."""
from bench.cli import main

main()
