"""Names in suites: ``cactus@ae`` is a *variant*, the ``cactus`` plugin with the options of
``[options."cactus@ae"]`` over ``[options.cactus]``, reported under its full name."""
from __future__ import annotations


def base_name(name: str) -> str:
    """The plugin behind a suite entry: ``cactus@ae`` -> ``cactus``; a plain name is itself."""
    return name.split("@", 1)[0]


def merge_variant_options(options: dict[str, dict], name: str) -> dict:
    """Options of suite entry ``name``: its plugin's table updated by the variant's own table."""
    return {**options.get(base_name(name), {}), **options.get(name, {})}
