"""batchembed: embed and rerank millions of rows offline, exactly once, within the provider's limits."""

__version__ = "0.1.0"
