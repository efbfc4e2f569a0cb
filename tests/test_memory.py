"""thresher.memory: the private-memory reading and its sampled peak."""

import time

import numpy as np

from thresher import memory


def test_private_mb_reads_rssanon_and_says_none_without_it(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmRSS:\t  900000 kB\nRssAnon:\t  524288 kB\nRssFile:\t 1000 kB\n")
    assert memory.private_mb(str(status)) == 512.0  # RssAnon, not VmRSS
    status.write_text("Name:\tpython\nVmRSS:\t  900000 kB\n")
    assert memory.private_mb(str(status)) is None
    assert memory.private_mb(str(tmp_path / "missing")) is None


def _hold(mb: int, seconds: float) -> None:
    block = np.ones(mb << 18, dtype=np.float32)  # mb MiB, every page written
    time.sleep(seconds)
    del block


def test_peak_sees_a_short_lived_allocation_and_reset_forgets_it():
    memory.watch(reset=True)
    base = memory.private_mb()
    assert base is not None and memory.peak_private_mb() >= base - 1
    _hold(256, 10 * memory.INTERVAL_S)
    now = memory.private_mb()
    peak = memory.peak_private_mb()
    assert peak >= base + 200 and now < peak - 200  # freed, and the peak kept
    assert memory.peak_rss_mb() >= peak  # the resident peak includes the private one
    memory.watch(reset=True)
    assert memory.peak_private_mb() < peak - 200
