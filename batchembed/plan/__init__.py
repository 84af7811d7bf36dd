"""``batchembed plan``: what a run would do and cost, sending nothing."""
