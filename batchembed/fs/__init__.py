"""Files and buckets: local paths and bucket URIs, the one atomic local write."""
