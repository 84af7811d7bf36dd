"""``batchembed status`` and ``batchembed verify``: read an output, never write it."""
