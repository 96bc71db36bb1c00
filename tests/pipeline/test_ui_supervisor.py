"""The `skurec ui` supervisor (skurec_assets/ui.py) on a fake, badly behaved `dagster dev` process tree: whatever
the tree does with the signal, nothing of it survives SIGINT / SIGTERM to the supervising process by 10 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from skurec_assets.ui import descendants, running

STOP_WITHIN_S = 10.0

STUBBORN = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.2)"

# A fake `dagster dev`: a child in its process group that ignores SIGINT/SIGTERM, and a child that escaped into its
# own session with a stubborn grandchild. The leader either exits at once on a signal, abandoning them all (as the
# real one was seen to), or ignores signals altogether.
FAKE_DEV = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    ready, mode = sys.argv[1], sys.argv[2]
    stubborn = {stubborn!r}
    subprocess.Popen([sys.executable, "-c", stubborn])
    subprocess.Popen([sys.executable, "-c", "import os, subprocess, sys, time\\nos.setsid()\\n"
                      f"subprocess.Popen([sys.executable, '-c', {{stubborn!r}}])\\nwhile True: time.sleep(0.2)"])
    if mode == "abandon":
        signal.signal(signal.SIGINT, lambda *a: os._exit(0))
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(ready, "w").write("ok")
    while True:
        time.sleep(0.2)
    """
).format(stubborn=STUBBORN)

DRIVER = "import sys\nfrom skurec_assets.ui import run_dagster_dev\nsys.exit(run_dagster_dev(sys.argv[1:]))"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
@pytest.mark.parametrize("mode", ["abandon", "ignore"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_supervisor_leaves_no_process_behind(tmp_path: Path, mode: str, sig: int) -> None:
    fake = tmp_path / "fake_dagster_dev.py"
    fake.write_text(FAKE_DEV)
    ready = tmp_path / "ready"
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, sys.executable, str(fake), str(ready), mode], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        tree: dict[int, int] = {}
        while time.monotonic() < deadline:
            tree = descendants(driver.pid)
            if ready.exists() and len(tree) >= 4:  # leader, its child, the escaped child, its grandchild
                break
            assert driver.poll() is None, "the supervisor exited early"
            time.sleep(0.1)
        assert len(tree) >= 4, tree
        escaped = [p for p in tree if os.getpgid(p) != list(tree)[0]]
        assert escaped  # the fake really has a process outside dagster dev's group
        time.sleep(0.6)  # one supervisor poll: it has recorded the whole tree
        t0 = time.monotonic()
        os.kill(driver.pid, sig)
        rc = driver.wait(timeout=STOP_WITHIN_S)
        while running(list(tree)) and time.monotonic() - t0 < STOP_WITHIN_S:
            time.sleep(0.1)
        took = time.monotonic() - t0
        assert not running(list(tree)), f"still running {took:.1f}s after the signal: {running(list(tree))}"
        assert rc == 128 + sig and took < STOP_WITHIN_S
    finally:
        for pid in running(list(descendants(driver.pid)) + [driver.pid]):
            os.kill(pid, signal.SIGKILL)


def test_supervisor_returns_the_exit_code_and_cleans_up_when_dev_exits_by_itself(tmp_path: Path) -> None:
    pid_file = tmp_path / "orphan.pid"
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "import time; time.sleep(1.0)\n"  # the supervisor records it
        "sys.exit(3)"
    )
    t0 = time.monotonic()
    driver = subprocess.run([sys.executable, "-c", DRIVER, sys.executable, "-c", code], timeout=30)
    assert driver.returncode == 3 and time.monotonic() - t0 < 20
    assert not running([int(pid_file.read_text())])  # the child it left behind was stopped too
