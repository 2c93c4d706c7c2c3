"""Persistence: the `Storage` interface and its records (`storage.base`), the SQLite and MongoDB
backends (`storage.sqlite`, `storage.mongo`) and the factory that picks one (`storage.factory`).

Nothing is imported here, so `import storage.base` loads no backend and no driver.
"""
