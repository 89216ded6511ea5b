"""Execution: where runs happen (local, process, Ray executors), per-run locks, the one place that decides
to skip a run and builds a failed record, and the throughput benchmark. Imports the engine and below."""
