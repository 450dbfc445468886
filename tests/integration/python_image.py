"""A local image with this test run's Python, for readers inside machines: the suite's busybox image
(conftest's busybox_image) with the interpreter added.

No registry is needed: the interpreter, its standard library (without tests,
GUI and packaging modules) and the shared libraries ldd names are copied at
the paths they have on the host, so the interpreter finds its prefix as it
does here. DIRAC's pilots read Machine/Job Features with Python 3's urlopen;
this image lets a test do exactly that from inside a container.
"""

import hashlib
import io
import os
import subprocess
import sys
import sysconfig
import tarfile

LABEL = "vac.test.python-image"
# Bumped when what goes in the image changes.
RECIPE = "2"
SKIPPED_DIRECTORIES = {"test", "tests", "site-packages", "idlelib", "tkinter", "turtledemo", "ensurepip",
                       "lib2to3", "__pycache__"}
SKIPPED_PREFIXES = ("_tkinter", "_test", "xxlimited", "_xxtestfuzz", "_ctypes_test")
PYTHON_IN_IMAGE = "/usr/local/bin/python3"


def _shared_libraries(paths):
    """Every shared library ldd names for `paths`, with the dynamic loader, by real path."""
    libraries = set()
    for path in paths:
        result = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30)
        for line in result.stdout.splitlines():
            words = line.split()
            if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
                libraries.add(words[words.index("=>") + 1])
            elif words and words[0].startswith("/"):
                libraries.add(words[0])    # the dynamic loader
    return libraries


def _files():
    """(path in the image, path on the host) of the interpreter, its library and what they link."""
    interpreter = os.path.realpath(sys.executable)
    stdlib = sysconfig.get_paths()["stdlib"]
    files = {interpreter: interpreter}
    extensions = []
    for directory, subdirectories, names in os.walk(stdlib):
        # config-*: what building extensions needs (libpython.a among it), not running Python.
        subdirectories[:] = [name for name in subdirectories
                             if name not in SKIPPED_DIRECTORIES and not name.startswith("config-")]
        for name in names:
            if name.startswith(SKIPPED_PREFIXES) or name.endswith((".pyc", ".a", ".exe")):
                continue
            path = os.path.join(directory, name)
            files[path] = path
            if name.endswith(".so"):
                extensions.append(path)
    for library in _shared_libraries([interpreter, *extensions]):
        files[library] = os.path.realpath(library)
    return files


def _context(files, base):
    dockerfile = (f"FROM {base}\nCOPY rootfs/ /\n"
                  "ENV PATH=/bin:/usr/local/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu\n"
                  ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        def add(name, data=b"", kind=tarfile.REGTYPE, mode=0o644, target=""):
            member = tarfile.TarInfo(name)
            member.type, member.mode, member.linkname = kind, mode, target
            member.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(member, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("Dockerfile", dockerfile)
        made = set()
        for image_path, host_path in sorted(files.items()):
            parts = image_path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    add(f"rootfs/{directory}", kind=tarfile.DIRTYPE, mode=0o755)
            with open(host_path, "rb") as source:
                add(f"rootfs/{image_path.lstrip('/')}", source.read(), mode=os.stat(host_path).st_mode & 0o755)
        for directory in ("usr", "usr/local", "usr/local/bin"):
            if directory not in made:
                made.add(directory)
                add(f"rootfs/{directory}", kind=tarfile.DIRTYPE, mode=0o755)
        add(f"rootfs{PYTHON_IN_IMAGE}", kind=tarfile.SYMTYPE, mode=0o777, target=os.path.realpath(sys.executable))
    context.seek(0)
    return context


def ensure_image(client, tag, base):
    """Build `tag` from the image `base` (busybox's) unless it already holds this interpreter on that very
    base; return the tag."""
    import docker

    with open(os.path.realpath(sys.executable), "rb") as binary:
        interpreter_bytes = binary.read()
    identity = hashlib.sha256(RECIPE.encode() + client.images.get(base).id.encode() + interpreter_bytes
                              + sys.version.encode()).hexdigest()
    try:
        if client.images.get(tag).labels.get(LABEL) == identity:
            return tag
    except docker.errors.ImageNotFound:
        pass
    client.images.build(fileobj=_context(_files(), base), custom_context=True, tag=tag,
                        labels={LABEL: identity}, rm=True, forcerm=True, network_mode="none")
    return tag
