"""The process exit codes of every ``batchembed`` command, in one place.

The CLI, the runner and the engines return these; README's "Exit codes" table lists the same
numbers (a test checks the table against this enum). A pipeline can rely on them: 0 means the
output is complete, 3 that it is complete except for rows listed in ``_failed.parquet``, 68 that the
server could not be reached (run again once it answers), 69 that it is published but a
sink is behind it (``batchembed sync`` catches it up), 75 that
batches are still running at the provider (``run --no-wait``: run again later), and
130/143 that a signal stopped a run that can be resumed by running it again.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What a ``batchembed`` process tells its caller; an ``int``, so ``sys.exit`` takes it as is."""

    #: Every row embedded (or skipped by policy); ``_SUCCESS`` written. Also: a command succeeded.
    OK = 0
    #: The job failed: configuration, input, authentication, I/O, or the server refused
    #: (``verify`` also uses it when the output is not exactly the input).
    FAILED = 1
    #: Usage error: a bad command line or a malformed ``--set``.
    USAGE = 2
    #: Finished, but some rows failed and are listed in ``_failed.parquet`` (no ``_SUCCESS``).
    PARTIAL = 3
    #: The server could not be reached: it never answered within ``limits.connect_timeout`` (nothing was
    #: written that binds the output), or it stopped answering for longer than ``limits.outage_seconds``
    #: (the run stopped like on SIGTERM: complete shards committed). Run again once it answers (EX_NOHOST).
    SERVER_UNREACHABLE = 68
    #: The output is complete and published, but a ``[[sink]]`` could not be synced (unreachable, or it
    #: refused): ``batchembed sync`` or the next run catches it up without buying anything (EX_UNAVAILABLE).
    SINK_BEHIND = 69
    #: ``run --no-wait`` (batch tier): batches are still running at the provider; run again later to collect
    #: them (EX_TEMPFAIL). What was ready is committed; no ``_SUCCESS`` yet.
    BATCHES_RUNNING = 75
    #: Stopped by SIGINT (128 + 2) after committing what was complete; run again to resume.
    SIGINT = 130
    #: Stopped by SIGTERM (128 + 15) after committing what was complete; run again to resume.
    SIGTERM = 143
