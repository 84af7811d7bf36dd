"""The output stage: the manifest and commit protocol, shards, the answer journal, stores, refresh, the Delta table."""
