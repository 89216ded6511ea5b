"""Built-in metabench plugins (import name ``metabench_plugins``), registered via entry points."""
