"""The one parser of /proc/self/mountinfo: fields, octal escapes, stacked mounts."""

from vac.mountinfo import MountEntry, escape, mount_at, parse_mountinfo, read_mountinfo, unescape


def test_mountinfo_parsing_unescapes_paths():
    text = (
        "22 27 0:21 / /proc rw,relatime shared:5 - proc proc rw\n"
        "90 27 7:3 / /var/lib/vac/machines/x/scratch rw,nodev,nosuid - ext4 /dev/loop3 rw\n"
        "91 27 8:1 / /mnt/with\\040space rw master:1 - xfs /dev/sda1 rw\n"
        "garbage line\n"
    )

    entries = parse_mountinfo(text)

    assert [(entry.mount_point, entry.fstype, entry.source) for entry in entries] == [
        ("/proc", "proc", "proc"),
        ("/var/lib/vac/machines/x/scratch", "ext4", "/dev/loop3"),
        ("/mnt/with space", "xfs", "/dev/sda1"),
    ]


def test_the_propagation_tags_are_kept_and_malformed_lines_skipped():
    text = (
        "22 1 253:1 / / rw,relatime shared:1 master:4 - ext4 /dev/vda1 rw\n"
        "23 1 0:21 / /private rw - tmpfs tmpfs rw\n"
        "24 1 0:22 / /no-type rw shared:2 -\n"
        "1 2 3\n"
        "\n"
    )

    assert parse_mountinfo(text) == [
        MountEntry("/", "ext4", "/dev/vda1", ("shared:1", "master:4")),
        MountEntry("/private", "tmpfs", "tmpfs", ()),
    ]


def test_the_topmost_of_stacked_mounts_is_found(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(
        f"30 1 0:30 / {tmp_path} rw shared:3 - tmpfs first rw\n"
        f"31 30 0:31 / {tmp_path} rw shared:4 - tmpfs second rw\n")

    assert mount_at(tmp_path, table).source == "second"
    assert mount_at(tmp_path / "elsewhere", table) is None


def test_this_host_has_a_root_mount():
    assert any(entry.mount_point == "/" for entry in read_mountinfo())


def test_a_mount_at_a_path_mountinfo_escapes_is_found_and_a_mere_prefix_is_not(tmp_path):
    spaced = tmp_path / "scratch dir\\x"
    spaced.mkdir()
    table = tmp_path / "mountinfo"
    table.write_text(
        f"30 1 0:30 / {escape(str(spaced))} rw - tmpfs spaced rw\n"
        f"31 1 0:31 / {escape(str(tmp_path / 'scratch'))}-other rw - tmpfs other rw\n")

    assert escape(str(spaced)).endswith("scratch\\040dir\\134x")
    assert unescape(escape("/a b\tc\nd\\e")) == "/a b\tc\nd\\e"
    assert mount_at(spaced, table).source == "spaced"
    assert mount_at(tmp_path / "scratch", table) is None
    assert mount_at(tmp_path / "scratch dir", table) is None
