"""``batchembed search``: the nearest rows of an output to a text, embedded by the job's own model."""
