"""Providers: one small module per wire shape, all behind the ``Embedder`` protocol in ``base``."""
