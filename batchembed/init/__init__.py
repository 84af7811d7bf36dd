"""``batchembed init``: propose a job file from a sample of the input."""
