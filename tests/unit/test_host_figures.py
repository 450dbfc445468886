"""The host's figures a factory_status carries, read by the vacquery child."""

from vac.workers import host_figures

MEMINFO = """MemTotal:       65536000 kB
MemFree:        15536000 kB
MemAvailable:   40000000 kB
SwapTotal:       4000000 kB
SwapFree:        3000000 kB
HugePages_Total:       0
"""


def test_memory_and_swap_as_vac_counts_them():
    assert host_figures.parse_meminfo(MEMINFO) == {"swap_used_kb": 1_000_000, "swap_free_kb": 3_000_000,
                                                    "mem_used_kb": 50_000_000, "mem_total_kb": 65_536_000}
    assert host_figures.parse_meminfo("garbage\n:\nMemTotal: x kB") == {
        "swap_used_kb": None, "swap_free_kb": None, "mem_used_kb": None, "mem_total_kb": None}


def test_boot_time_from_uptime():
    assert host_figures.parse_boot_time("3600.25 7000.00\n", 1_800_000_000.0) == 1_799_996_399
    assert host_figures.parse_boot_time("", 1.0) is None and host_figures.parse_boot_time("x", 1.0) is None


def test_this_hosts_figures_are_read_and_a_missing_state_dir_is_unknown(tmp_path):
    figures = host_figures.read_host_figures(str(tmp_path), 1_800_000_000.0)
    assert figures["daemon_disk_avail_kb"] >= 0 and figures["root_disk_avail_inodes"] >= 0
    assert figures["mem_total_kb"] > 0 and figures["kernel_version"] and figures["os_issue"]
    assert 0 < figures["boot_time"] < 1_800_000_000
    missing = host_figures.read_host_figures(str(tmp_path / "gone"), 1_800_000_000.0)
    assert missing["daemon_disk_avail_kb"] is None and missing["daemon_disk_avail_inodes"] is None


def test_figures_are_read_again_only_after_the_cache_time(tmp_path):
    now = [0.0]
    figures = host_figures.HostFigures(str(tmp_path), monotonic=lambda: now[0])
    first = figures.get()
    assert figures.get() is first
    now[0] += host_figures.CACHE_SECONDS
    assert figures.get() is not first
