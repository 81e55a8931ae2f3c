"""rnnlab.allocator: glibc keeps freed memory for reuse, so a training step that frees
and allocates the same large tensors stops taking fresh pages (minor faults) each time.
The setting changes the whole process, so the checks that apply it run in a child."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from rnnlab import allocator
from rnnlab.cli import main as cli_main
from rnnlab.errors import UserError

glibc = pytest.mark.skipif(allocator._glibc() is None, reason="mallopt is glibc's")

# Allocate and free a 64 MB tensor again and again; print the minor faults of the
# last 5 rounds, after the heap has settled.
CHILD = textwrap.dedent(
    """
    import resource, sys, torch
    from rnnlab import allocator
    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory() and allocator.keeps_freed_memory()
    else:
        assert not allocator.keeps_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(15):
        if i == 10:
            start = faults()
        block = torch.ones(16 << 20)
        del block
    print(faults() - start)
    """
)


def child_faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env, check=True
    )
    return int(done.stdout.split()[-1])


@glibc
def test_kept_memory_is_reused_without_fresh_pages():
    pages = (64 << 20) // 4096  # what one fresh 64 MB block faults in
    assert child_faults("default") >= 5 * pages * 0.9  # glibc maps each block afresh
    assert child_faults("keep") < pages // 10  # the heap's own pages again


def test_limit_must_fit_malloc_s_int():
    for bad in (0, -1, 1 << 31):
        with pytest.raises(ValueError, match="limit must be"):
            allocator.keep_freed_memory(bad)


def test_no_glibc_no_change(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() is False


def test_configure_reads_the_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert allocator.configure({}) is True
    assert allocator.configure({"RNNLAB_MALLOC": " Keep "}) is True
    assert allocator.configure({"RNNLAB_MALLOC": "default"}) is False
    assert len(calls) == 2
    with pytest.raises(UserError, match="RNNLAB_MALLOC='jemalloc': use 'keep'"):
        allocator.configure({"RNNLAB_MALLOC": "jemalloc"})


def test_the_program_configures_the_allocator_before_the_command(monkeypatch):
    order = []
    monkeypatch.setattr(allocator, "configure", lambda: order.append("allocator"))
    monkeypatch.setattr(cli_main, "main", lambda: order.append("command") or 0)
    with pytest.raises(SystemExit) as stop:
        cli_main.entry()
    assert stop.value.code == 0 and order == ["allocator", "command"]


def test_a_bad_setting_is_a_one_line_error():
    env = dict(os.environ, RNNLAB_MALLOC="bogus")
    done = subprocess.run(
        [sys.executable, "-m", "rnnlab", "--version"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "rnnlab: error: RNNLAB_MALLOC='bogus': use 'keep' (the default: the C allocator "
        "keeps freed memory for reuse) or 'default' (its own settings)"
    ]
