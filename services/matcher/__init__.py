"""The matcher service: one shard of the reference index (ANN shortlist + geometric verification)."""
