"""dcm-ref benchmarks: speed ratios of the DCM heads (speed.py) and their accuracy under label
noise (accuracy.py: the grid and its runner; report.py: the tables). Results: bench/README.md.
Run from the repository root: `python -m bench --help` (the command line is cli.py)."""
