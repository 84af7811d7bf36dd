"""The batch tier (``[model] tier = "batch"``): a job submitted to a provider's batch API at its
discount, crash-safe at every step, written through the same units, shards and manifest as the
online tier. See :mod:`batchembed.run.batch.stages` for the flow and :mod:`batchembed.run.batch.ledger` for
what is saved where."""
