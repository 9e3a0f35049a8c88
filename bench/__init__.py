"""Benchmark tool for the text-classification service: `python -m bench --help`."""
