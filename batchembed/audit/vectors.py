"""What ``status`` says about an output's vectors: whether the model's full vectors are unit length,
whether vectors are normalised here, and the min/max length of those written (from the manifest)."""

from __future__ import annotations

from typing import Any

from batchembed.job.config import JobConfig
from batchembed.output.manifest import Manifest
from batchembed.tasks.normalize import written_norms


def vector_status(job: JobConfig, manifest: Manifest) -> dict[str, Any]:
    """What the manifest records about the vectors written (normalize.py): whether the model's full
    vectors are unit length, whether vectors are normalised here, and the min/max length of the vectors
    in the shards its figures cover. Nothing for an output without vectors."""
    server = manifest.server
    if job.is_rerank or ("unit_norm" not in server and "vector_norms" not in server):
        return {}
    mode, unit = job.model.normalize, server.get("unit_norm")
    return {
        "model_unit_norm": unit,
        "normalize": mode,
        "normalizes_here": mode == "always" or (mode == "auto" and bool(unit)),
        "vector_norms": written_norms(manifest),
    }


def vector_lines(doc: dict[str, Any], shards: int) -> list[str]:
    """``status``'s lines about the vectors' lengths (none for an output without them)."""
    if "normalize" not in doc:
        return []
    lines = []
    norms = doc.get("vector_norms")
    if norms:
        covered = f" (the vectors of {norms['shards']} of {shards} shards)" if norms["shards"] < shards else ""
        lines.append(f"vectors:  lengths {norms['min']:.4f}..{norms['max']:.4f} (min..max){covered}")
    unit = {True: "are unit length", False: "are not unit length", None: "are of a length not known yet"}
    here = "a vector not of unit length is L2-normalised before writing" if doc["normalizes_here"] else "as sent"
    mode, full = doc["normalize"], unit[doc["model_unit_norm"]]
    lines.append(f'          the model\'s full vectors {full}; model.normalize = "{mode}": {here}')
    return lines
