"""The job: the job file (config), model presets (catalog), and the job resolved once (resolved)."""
