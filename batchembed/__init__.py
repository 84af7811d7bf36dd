"""batchembed."""
