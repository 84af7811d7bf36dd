"""Whose output is this: the settings ``run`` would record for a job, compared with an output's manifest.

``run`` refuses to resume an output whose manifest holds another job's fingerprint; ``status`` and
``verify`` ask the same question here, with ``run``'s own fingerprint (``job_fingerprint`` over the
job's resolved settings and its task, built as ``plan`` builds it: no provider, nothing sent), so
the three commands can never disagree about which job an output belongs to. Only the job's
*settings* are compared: whether the output is up to date with its input files is another question.
"""

from __future__ import annotations

from typing import Any

from batchembed.job.config import JobConfig
from batchembed.job.fingerprint import describe_changes, job_fingerprint
from batchembed.job.resolved import resolve
from batchembed.run.assemble import build_counter, build_task
from batchembed.stats import Stats
from batchembed.tasks.memo import VectorMemo

#: The fingerprint's record of the input files (not a setting: compared elsewhere).
_INPUTS = "files"


def run_fingerprint(job: JobConfig) -> dict[str, Any]:
    """The fingerprint ``run`` records for ``job``, without its input files (``run``'s own function)."""
    resolved = resolve(job)
    memo = None if resolved.is_rerank else VectorMemo(0)  # nothing is embedded: an empty memo
    task = build_task(resolved, None, build_counter(resolved), stats=Stats(), memo=memo)
    try:
        fingerprint = job_fingerprint(resolved, task)  # the job's settings (the input files are its work)
    finally:
        task.close()
    return _settings(fingerprint)


def _settings(fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fingerprint.items() if k != _INPUTS}


def job_differences(job: JobConfig, recorded: dict[str, Any]) -> list[str]:
    """How ``job``'s settings differ from those an output was written with (``recorded``: its manifest's
    fingerprint), as ``run``'s refusal names them ("model.dimensions: None -> 128"); [] for the same job."""
    return describe_changes(_settings(recorded), run_fingerprint(job))


def another_job(differences: list[str]) -> str:
    """The one line saying the output belongs to another job, and what differs."""
    return (
        "this output was written by another job (" + "; ".join(differences) + "): `run` refuses to resume it "
        "(--restart discards it), and its rows are not this job's"
    )
