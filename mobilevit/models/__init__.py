"""One folder per model family, as transformers lays them out: each holds its configuration, its modeling,
its eval fast path and its checkpoint conversion table, and builds its `ModelFamily` in `__init__.py`.
`mobilevit/auto.py` registers the families; tools reach them only through it."""
