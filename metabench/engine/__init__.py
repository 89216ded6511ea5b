"""The engine: suites, plugin discovery, one run from dataset to record, records, checkpoints, evaluation,
clustering scores and the run's environment. Imports the plugin API and the toolkit only."""
