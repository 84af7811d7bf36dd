"""The input stage: finding input files, reading them as record batches (Parquet, CSV, JSON Lines), units and checks."""
