"""Build a local FROM-scratch image holding the host's static busybox.

No registry is needed: the image is made from the busybox-static package.
The demo (`make demo`) and the test suite both use it.

usage: python contrib/demo/busybox_image.py [TAG]
"""

import hashlib
import io
import os
import subprocess
import sys
import tarfile

BUSYBOX_PATH = "/bin/busybox"
SHA256_LABEL = "vac.test.busybox-sha256"
ELF_PT_INTERP = 3


class ImageBuildError(Exception):
    """The image cannot be built here; the message says what to install."""


def _is_static_elf(path):
    """True if the ELF file at path has no program interpreter (needs no libc)."""
    with open(path, "rb") as binary:
        header = binary.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        byteorder = "little" if header[5] == 1 else "big"
        program_headers_offset = int.from_bytes(header[32:40], byteorder)
        entry_size = int.from_bytes(header[54:56], byteorder)
        entry_count = int.from_bytes(header[56:58], byteorder)
        binary.seek(program_headers_offset)
        table = binary.read(entry_size * entry_count)
    entry_types = (int.from_bytes(table[i:i + 4], byteorder) for i in range(0, len(table), entry_size))
    return ELF_PT_INTERP not in entry_types


def _busybox_build_context(busybox_bytes, applets):
    """A tar build context: busybox and one /bin symlink per applet, FROM scratch."""
    dockerfile = b"FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD [\"/bin/sh\"]\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        def add(name, data=b"", kind=tarfile.REGTYPE, mode=0o644, target=""):
            member = tarfile.TarInfo(name)
            member.type, member.mode, member.linkname = kind, mode, target
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("Dockerfile", dockerfile)
        add("rootfs/bin", kind=tarfile.DIRTYPE, mode=0o755)
        add("rootfs/tmp", kind=tarfile.DIRTYPE, mode=0o1777)
        add("rootfs/bin/busybox", busybox_bytes, mode=0o755)
        for applet in applets:
            if applet != "busybox":
                add(f"rootfs/bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, target="busybox")
    context.seek(0)
    return context


def ensure_image(client, tag):
    """Build `tag` unless it already holds this host's busybox; return the tag."""
    import docker

    if not os.path.exists(BUSYBOX_PATH):
        raise ImageBuildError(f"{BUSYBOX_PATH} is missing; install busybox-static "
                              "(scripts/bootstrap does)")
    if not _is_static_elf(BUSYBOX_PATH):
        raise ImageBuildError(f"{BUSYBOX_PATH} is not statically linked; install busybox-static")
    with open(BUSYBOX_PATH, "rb") as binary:
        busybox_bytes = binary.read()
    busybox_sha256 = hashlib.sha256(busybox_bytes).hexdigest()
    # Reuse the image of an earlier run when it holds this very binary.
    try:
        existing = client.images.get(tag)
    except docker.errors.ImageNotFound:
        existing = None
    if existing is not None and existing.labels.get(SHA256_LABEL) == busybox_sha256:
        return tag
    listing = subprocess.run([BUSYBOX_PATH, "--list"], capture_output=True, text=True,
                             check=True, timeout=10)
    applets = sorted(set(listing.stdout.split()))
    client.images.build(fileobj=_busybox_build_context(busybox_bytes, applets),
                        custom_context=True, tag=tag, labels={SHA256_LABEL: busybox_sha256},
                        rm=True, forcerm=True, network_mode="none")
    return tag


def main(argv):
    import docker

    tag = argv[1] if len(argv) > 1 else "vac-demo-busybox:latest"
    try:
        print(ensure_image(docker.from_env(timeout=60), tag))
    except ImageBuildError as error:
        print(f"busybox_image: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
