"""Sinks: vector stores (Postgres/pgvector, LanceDB) kept equal to the output's Delta table, exactly once.

``sync`` is the one entry point (runs and the ``sync`` command); ``changes`` computes what changed
between two table versions; ``postgres`` and ``lancedb`` apply it; ``shape`` checks a store's
table before anything is bought; ``audit`` answers ``status`` and ``verify``.
"""
