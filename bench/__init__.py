"""Benchmarks of aitoolbox against a hand-written PyTorch loop and its peers; see ``bench/run.py``."""
