"""A run: the runner, its asyncio pipeline, progress, the composition root, the engines and the batch tier."""
