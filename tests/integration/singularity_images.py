"""Unpacked Singularity/Apptainer images for tests, built from Debian's busybox-static."""

import os
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: a static binary, so the image needs no libraries
BUSYBOX_DEADLINE = 10
# What an unpacked Apptainer image has; the stand-in makes any other mount point itself.
IMAGE_DIRECTORIES = ("bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "var", "var/tmp")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def busybox_applets():
    """The applet names busybox offers (sh, ls, cat, id, sleep, hostname, ps, ...)."""
    listing = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True,
                             timeout=BUSYBOX_DEADLINE)
    return [name for name in listing.stdout.split() if name and "/" not in name and name != "busybox"]


def write_if_changed(path, content, mode):
    """Write a small file only when its content differs; set its mode either way."""
    if not path.is_file() or path.read_bytes() != content:
        path.write_bytes(content)
    path.chmod(mode)


def build_busybox_image(directory: Path) -> Path:
    """Make (or complete) an image directory at directory; return it.

    Everything in it is world-readable so an unprivileged account can run it,
    but the account must also be able to reach directory (its parents 0755 or
    0711). Running it again changes nothing.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name in IMAGE_DIRECTORIES:
        (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / name).chmod(0o1777 if name in ("tmp", "var/tmp") else 0o755)
    (directory / "root").chmod(0o700)
    write_if_changed(directory / "bin" / "busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in busybox_applets():
        link = directory / "bin" / applet
        if not link.is_symlink() or os.readlink(link) != "busybox":
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("busybox")
    write_if_changed(directory / "etc" / "passwd", PASSWD.encode(), 0o644)
    write_if_changed(directory / "etc" / "group", GROUP.encode(), 0o644)
    return directory
