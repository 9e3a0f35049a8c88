"""The integration tests' server is the benchmark's launcher (bench/server.py)."""

from bench.server import ServerProcess, free_port

__all__ = ["ServerProcess", "free_port"]
