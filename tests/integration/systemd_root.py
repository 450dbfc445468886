"""A Debian 12 root with systemd for vacd to run under, made with debootstrap and cached as a Docker image.

The recipe is what build_root() does, with the suite, packages and
requirements it uses, and vac's dependencies in pyproject.toml: its hash
names the image (vac-test-systemd:<hash>) and the root's tarball under
/var/cache/vac-test/, so a change to either builds a new root and a run
with neither changed reuses the image (or imports the tarball again after
the image was pruned). The Debian packages debootstrap fetched stay in
/var/cache/vac-test/debs for the next recipe.

The root is Debian 12 minbase with systemd as init, Python and bubblewrap
(for the stand-in apptainer of the Singularity tests), and a virtualenv at
/opt/vac, where the README's install steps put vac, holding vac's
dependencies but not vac: each test session installs vac from the
checkout (systemd_host.py). The dependencies are built as wheels on the
host with its pip and its package index, so nothing inside the root needs
the network. About two minutes on a fresh machine (the debootstrap), a few
seconds when only the image has to be imported again.
"""

import fcntl
import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# On top of minbase: init, the bus systemctl and systemd-run may use, the
# interpreter and its venv module, ps/pgrep for a person looking in, and
# bubblewrap for tests/bin/apptainer.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps", "bubblewrap")
# What the root's venv needs to build vac from a checkout without the network.
BUILD_REQUIREMENTS = ("setuptools>=61", "wheel")
VENV = "/opt/vac"
WHEELHOUSE = "tmp/vac-wheels"

CACHE_DIR = Path("/var/cache/vac-test")
DEB_CACHE = CACHE_DIR / "debs"
LOCK_FILE = CACHE_DIR / "systemd-root.lock"
IMAGE_REPOSITORY = "vac-test-systemd"
# Another run building the same root waits for it rather than building twice.
LOCK_WAIT_SECONDS = 900
STEP_DEADLINE_SECONDS = 600
CHECKOUT = Path(__file__).resolve().parents[2]
# The environment of commands run in the root: nothing of the host's pip or locale settings.
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}


class RootUnavailable(Exception):
    """The root could not be built or imported; the message says why."""


def requirements(pyproject: Path = CHECKOUT / "pyproject.toml") -> list[str]:
    """vac's dependencies as pyproject.toml lists them."""
    with open(pyproject, "rb") as stream:
        return list(tomllib.load(stream)["project"]["dependencies"])


def recipe_hash(recipe_text: str, dependencies: list[str]) -> str:
    """The name of a root built by `recipe_text` with `dependencies` (pure)."""
    digest = hashlib.sha256(recipe_text.encode())
    for requirement in dependencies:
        digest.update(b"\0" + requirement.encode())
    return digest.hexdigest()[:16]


def recipe_text() -> str:
    """What decides the root's content: the build's steps and the names they use."""
    names = repr((SUITE, MIRROR, PACKAGES, BUILD_REQUIREMENTS, VENV, WHEELHOUSE, CHROOT_ENV))
    return names + "\n" + inspect.getsource(build_root)


def image_tag() -> str:
    """The image this checkout's recipe builds."""
    return f"{IMAGE_REPOSITORY}:{recipe_hash(recipe_text(), requirements())}"


def _run(argv, log, env=None, timeout=STEP_DEADLINE_SECONDS):
    log.write(f"$ {' '.join(str(arg) for arg in argv)}\n")
    log.flush()
    started = time.monotonic()
    result = subprocess.run([str(arg) for arg in argv], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False)
    log.write(f"# exit {result.returncode} after {time.monotonic() - started:.1f} s\n")
    log.flush()
    if result.returncode != 0:
        raise RootUnavailable(f"{' '.join(str(arg) for arg in argv[:3])} … failed ({result.returncode}); "
                              f"see {log.name}")


def _image_exists(tag: str) -> bool:
    result = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, timeout=60, check=False)
    return result.returncode == 0


def build_root(directory: Path, log) -> None:
    """debootstrap the root into `directory` and put vac's dependencies in its venv."""
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    # Two stages, so dpkg can be told not to fsync every file before it
    # configures the packages: the root is a throwaway, and this halves the time.
    _run(["debootstrap", "--foreign", "--variant=minbase", f"--include={','.join(PACKAGES)}",
          f"--cache-dir={DEB_CACHE}", SUITE, directory, MIRROR], log)
    unsafe_io = directory / "etc/dpkg/dpkg.cfg.d/vac-test-unsafe-io"
    unsafe_io.parent.mkdir(parents=True, exist_ok=True)
    unsafe_io.write_text("force-unsafe-io\n")
    _run(["chroot", directory, "/debootstrap/debootstrap", "--second-stage"], log, env=CHROOT_ENV)
    unsafe_io.unlink()

    wanted = [*requirements(), *BUILD_REQUIREMENTS]
    wheelhouse = directory / WHEELHOUSE
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
          "--wheel-dir", wheelhouse, *wanted], log)
    _run(["chroot", directory, "python3", "-m", "venv", VENV], log, env=CHROOT_ENV)
    _run(["chroot", directory, f"{VENV}/bin/pip", "install", "--quiet", "--disable-pip-version-check",
          "--no-index", "--find-links", f"/{WHEELHOUSE}", *wanted], log, env=CHROOT_ENV)
    shutil.rmtree(wheelhouse)
    # The README's install steps: `vac` on PATH.
    (directory / "usr/local/bin/vac").symlink_to(f"{VENV}/bin/vac")


def _remove_stale(tag: str, log) -> None:
    """Tarballs and images of other recipes: never used again."""
    name = tag.split(":", 1)[1]
    for pattern in ("systemd-root-*.tar", "systemd-root-*.log"):
        for path in CACHE_DIR.glob(pattern):
            if not path.name.startswith(f"systemd-root-{name}."):
                path.unlink(missing_ok=True)
    listing = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPOSITORY],
                             capture_output=True, text=True, timeout=60, check=False)
    for other in listing.stdout.split():
        if other != tag:
            # In use by a container of another run: it stays, and goes next time.
            subprocess.run(["docker", "image", "rm", other], stdout=log, stderr=subprocess.STDOUT,
                           timeout=60, check=False)


def ensure_image() -> str:
    """The tag of an image of the current recipe's root, built or imported as needed."""
    if os.geteuid() != 0:
        raise RootUnavailable("building a root with debootstrap needs root")
    if shutil.which("debootstrap") is None:
        raise RootUnavailable("debootstrap is not installed (Debian package debootstrap; scripts/bootstrap "
                              "installs it)")
    tag = image_tag()
    if _image_exists(tag):
        return tag
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    name = tag.split(":", 1)[1]
    tarball = CACHE_DIR / f"systemd-root-{name}.tar"
    with open(LOCK_FILE, "w") as lock:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RootUnavailable(f"another run held {LOCK_FILE} for {LOCK_WAIT_SECONDS} s") from None
                time.sleep(1)
        if _image_exists(tag):
            return tag
        with open(CACHE_DIR / f"systemd-root-{name}.log", "a") as log:
            if not tarball.exists():
                directory = CACHE_DIR / f"systemd-root-{name}.build"
                shutil.rmtree(directory, ignore_errors=True)
                try:
                    build_root(directory, log)
                    _run(["tar", "--numeric-owner", "-C", directory, "-cf", f"{tarball}.part", "."], log)
                    os.rename(f"{tarball}.part", tarball)
                except subprocess.TimeoutExpired as error:
                    raise RootUnavailable(f"a step of the root's build took over {error.timeout} s; "
                                          f"see {log.name}") from None
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
                    Path(f"{tarball}.part").unlink(missing_ok=True)
            _run(["docker", "import", tarball, tag], log)
            _remove_stale(tag, log)
    return tag


if __name__ == "__main__":
    # Build (or find) the root by hand: python tests/integration/systemd_root.py
    print(ensure_image())
