"""A run's process keeps Arrow on jemalloc and the C heap in one glibc arena (``run.allocators``, issue 31:
peak RSS at 1M rows 616-657 MB -> 482-494 MB), says so in ``_report.json``, and a user's own choice in the
environment wins; while it sends, the collector leaves what setup built alone."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref

import pytest

from batchembed.run.allocators import setup_frozen
from batchembed.run.pipeline import LocalStages
from tests.conftest import ROOT, cli_env, job_for, run_cli, run_here, write_parquet

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="jemalloc and glibc arenas: Linux only")

#: A child that lets four threads allocate, then prints how many glibc heaps (arenas) the process has.
_HEAPS = """
import ctypes, sys, threading
if sys.argv[1] == "settled":
    from batchembed.run.allocators import settle_allocators
    settle_allocators()
import pyarrow

def work():
    kept = [bytes(300_000) for _ in range(20)]

threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.open_memstream.restype = ctypes.c_void_p
text, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(text), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(text.value.decode().count("<heap nr="), pyarrow.default_memory_pool().backend_name)
"""

#: A child that imports numpy and prints how many threads the process has (OpenBLAS starts its own at import).
_THREADS = """
import sys
if sys.argv[1] == "settled":
    from batchembed.run.allocators import settle_allocators
    settle_allocators()
import numpy
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) for line in status if line.startswith("Threads:")))
"""


def _env(**chosen: str) -> dict[str, str]:
    """A child's environment with only ``chosen`` allocator settings: an earlier in-process run of this
    test worker settled ``ARROW_DEFAULT_MEMORY_POOL`` in ``os.environ``, which ``cli_env`` would pass on."""
    settled = (
        "ARROW_DEFAULT_MEMORY_POOL",
        "MALLOC_ARENA_MAX",
        "OPENBLAS_NUM_THREADS",
        "GOTO_NUM_THREADS",
        "OMP_NUM_THREADS",
    )
    env = {k: v for k, v in cli_env().items() if k not in settled}
    return {**env, **chosen}


def _heaps(mode: str, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", _HEAPS, mode], capture_output=True, text=True, env=_env(**env), cwd=ROOT, check=True
    )
    heaps, pool = done.stdout.split()
    return int(heaps), pool


def test_settled_the_threads_of_a_process_share_one_arena_and_arrow_allocates_with_jemalloc():
    heaps, pool = _heaps("plain")
    assert heaps > 1 and pool != "jemalloc"  # what pyarrow (mimalloc) and glibc do by themselves
    assert _heaps("settled") == (1, "jemalloc")


def test_settling_leaves_the_users_own_choice():
    heaps, pool = _heaps("settled", MALLOC_ARENA_MAX="3", ARROW_DEFAULT_MEMORY_POOL="system")
    assert pool == "system" and heaps > 1


def _threads(mode: str, **env: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _THREADS, mode], capture_output=True, text=True, env=_env(**env), cwd=ROOT, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no thread of its own on one core")
def test_settled_numpy_starts_no_blas_threads_unless_the_user_asked_for_them():
    assert _threads("plain") > 1  # OpenBLAS's threads, waiting (spinning) for work
    assert _threads("settled") == 1
    assert _threads("settled", OPENBLAS_NUM_THREADS="2") == 2
    assert _threads("settled", OMP_NUM_THREADS="2") == 2


def test_a_run_reports_its_peak_memory_and_the_allocators_it_settled(tmp_path, srv):
    job = job_for(tmp_path, srv, write_parquet(tmp_path / "in.parquet", [f"text {i}" for i in range(100)]))
    assert run_cli("run", str(job), "--quiet", env=_env()).returncode == 0
    memory = json.loads((tmp_path / "out" / "_report.json").read_text())["memory"]
    assert memory["arrow_pool"] == "jemalloc" and memory["glibc_arenas_max"] == 1
    assert 30 < memory["peak_rss_mb"] < 2000

    chosen = _env(ARROW_DEFAULT_MEMORY_POOL="system", MALLOC_ARENA_MAX="4")
    assert run_cli("run", str(job), "--quiet", "--restart", env=chosen).returncode == 0
    memory = json.loads((tmp_path / "out" / "_report.json").read_text())["memory"]
    assert memory["arrow_pool"] == "system" and memory["glibc_arenas_max"] == 4


def test_while_sending_the_collector_leaves_what_setup_built_and_gets_it_back_after():
    class Node:
        pass

    cycle = Node()
    cycle.itself = cycle  # garbage only the cyclic collector can free
    gone = weakref.ref(cycle)
    del cycle
    with setup_frozen():
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert gone() is not None  # frozen: not walked, not freed
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None  # handed back: collected as before


def test_a_run_freezes_its_setup_while_it_sends(tmp_path, fake, monkeypatch):
    frozen_while_sending = []
    real_run = LocalStages.run

    async def run(self, *args):
        frozen_while_sending.append(gc.get_freeze_count())
        return await real_run(self, *args)

    monkeypatch.setattr(LocalStages, "run", run)
    job = job_for(tmp_path, fake, write_parquet(tmp_path / "in.parquet", [f"text {i}" for i in range(50)]))
    assert run_here(fake, "run", str(job), "--quiet").returncode == 0
    assert frozen_while_sending and frozen_while_sending[0] > 10_000  # the modules, the job, the plan...
    assert gc.get_freeze_count() == 0
