"""Plugin checks: the conformance battery behind ``metabench check-plugin`` and the ``new-plugin``
scaffold. Imports execution and below."""
