"""systemd booted as PID 1 in a container of the host's engine, with vac installed as the README says.

The container (one per test session) runs the root of systemd_root.py:

    docker run -d -t -e container=docker --stop-signal SIGRTMIN+3
        --tmpfs /run --tmpfs /run/lock --cgroupns=private
        --cap-add ALL --cap-drop <each capability the host's bounding set lacks>
        --security-opt seccomp=unconfined --security-opt apparmor=unconfined
        --security-opt systempaths=unconfined --network none
        -v /var/run/docker.sock:/run/docker.sock -v SHARED:SHARED
        IMAGE /bin/sh -c BOOT_SCRIPT

Why each flag: `container=docker` tells systemd it is in a container (no
hardware, no kernel modules); SIGRTMIN+3 is systemd's "halt" for `docker
stop`; /run and /run/lock must be tmpfs for systemd. `--privileged` fails
on hosts whose capability bounding set lacks one (this one lacks
CAP_SYS_RESOURCE: runc's "unable to apply caps"), so every capability is
added but those. seccomp and AppArmor would refuse systemd's and
bubblewrap's mounts, and the masked /proc paths (systempaths) would stop
bubblewrap mounting a new procfs for the stand-in apptainer. No network:
vacd needs only the engine's socket, and everything was installed when the
root was built.

The cgroup layout: the container has a cgroup namespace of its own, whose
root is its cgroup; the engine mounts its hierarchies read-only, and the
boot script makes them writable before it execs systemd, so systemd can
make its units' cgroups and vac its machines' ones:
- hybrid (v1 controllers in a tmpfs at /sys/fs/cgroup, cgroup2 at
  /sys/fs/cgroup/unified, as on this machine): the tmpfs and each hierarchy
  mounted in it are remounted read-write (without the tmpfs, systemd warns
  "Failed to create compat systemd cgroup"; without the controllers, it
  cannot put a scope's limits in memory, cpu and pids);
- v1 only: the same, without the unified hierarchy;
- v2: the cgroup2 mount at /sys/fs/cgroup is remounted read-write (not tried
  on this machine).

The engine resolves bind-mount sources on the host, so the directory vacd
keeps its state in (and so its machines' directories) is SHARED, bound at
the same path inside and outside. It is under /var/tmp: at boot,
systemd-tmpfiles empties /tmp, and a bind under it would be emptied too.
vac is installed into /opt/vac from a copy of the checkout made in SHARED
(pip install, no dependencies: the root has them), contrib/systemd/vacd.service
and vac.slice unchanged into /etc/systemd/system.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from systemd_root import CHECKOUT, VENV, RootUnavailable, ensure_image
from vac.cgroups.layout import detect

CONTAINER_LABEL = "vac.test=systemd"
# The test run a container belongs to: one whose run is gone (killed) is removed by the next.
RUN_LABEL = "vac.test.pid"
BOOT_SECONDS = 60
# Makes the engine's read-only cgroup mounts writable (see the module's docstring), then runs systemd.
BOOT_SCRIPT = """set -e
mount -o remount,rw /sys/fs/cgroup
for hierarchy in /sys/fs/cgroup/*; do
    if mountpoint -q "$hierarchy"; then mount -o remount,bind,rw "$hierarchy"; fi
done
exec /sbin/init
"""
# Linux's capabilities by number (capability.h), as the engine names them.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE")
UNIT_FILES = ("contrib/systemd/vacd.service", "contrib/systemd/vac.slice")
UNIT = "vacd.service"
# Test-only drop-ins go to /run (gone at the container's end, and after each test).
RUNTIME_DROP_IN_DIR = f"/run/systemd/system/{UNIT}.d"
COMMAND_SECONDS = 120


def missing_capabilities(status_text):
    """The capabilities absent from the bounding set in a /proc/PID/status text (pure)."""
    for line in status_text.splitlines():
        if line.startswith("CapBnd:"):
            bounding = int(line.split()[1], 16)
            return [name for bit, name in enumerate(CAPABILITIES) if not bounding & (1 << bit)]
    raise ValueError("no CapBnd line in the status text")


def run_argv(image, name, shared_dir):
    """The `docker run` that boots systemd (see the module's docstring)."""
    argv = ["docker", "run", "-d", "-t", "--name", name, "--label", CONTAINER_LABEL,
            "--label", f"{RUN_LABEL}={os.getpid()}",
            "-e", "container=docker", "--stop-signal", "SIGRTMIN+3",
            "--tmpfs", "/run", "--tmpfs", "/run/lock", "--cgroupns=private", "--cap-add", "ALL"]
    for capability in missing_capabilities(Path("/proc/self/status").read_text()):
        argv += ["--cap-drop", capability]
    argv += ["--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
             "--security-opt", "systempaths=unconfined", "--network", "none",
             "-v", "/var/run/docker.sock:/run/docker.sock", "-v", f"{shared_dir}:{shared_dir}"]
    return argv + [image, "/bin/sh", "-c", BOOT_SCRIPT]


class CommandFailed(AssertionError):
    pass


class SystemdHost:
    """A booted container: commands run in it, its units, its journal."""

    def __init__(self, name, shared_dir, layout_kind):
        self.name = name
        self.shared_dir = shared_dir
        self.layout_kind = layout_kind

    def run(self, *argv, check=True, timeout=COMMAND_SECONDS, input=None):
        """`docker exec` of argv; the CompletedProcess (text). check: fail unless it exits 0."""
        result = subprocess.run(["docker", "exec", *(["-i"] if input is not None else []), self.name, *argv],
                                input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise CommandFailed(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def systemctl(self, *args, check=True, timeout=COMMAND_SECONDS):
        return self.run("systemctl", *args, check=check, timeout=timeout)

    def show(self, unit, *properties):
        """Unit properties as systemctl show gives them."""
        text = self.systemctl("show", unit, *(f"--property={name}" for name in properties)).stdout
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def write(self, path, text):
        self.run("sh", "-c", 'cat > "$1"', "-", path, input=text)

    def boot_state(self):
        return self.systemctl("is-system-running", check=False, timeout=30).stdout.strip()

    # The journal.

    def cursor(self):
        """Where the journal ends now: entries after it are the ones to come."""
        text = self.run("journalctl", "--quiet", "--lines=0", "--show-cursor").stdout
        return text.strip().removeprefix("-- cursor: ")

    def journal(self, after=None, unit=UNIT):
        """The unit's journal entries (vacd's lines and systemd's about the unit) as dicts, oldest first."""
        argv = ["journalctl", "--no-pager", "--output=json", f"--unit={unit}"]
        if after:
            argv.append(f"--after-cursor={after}")
        entries = []
        for line in self.run(*argv).stdout.splitlines():
            entry = json.loads(line)
            message = entry.get("MESSAGE", "")
            if isinstance(message, list):
                # journald gives non-UTF-8 or binary messages as byte arrays.
                message = bytes(message).decode("utf-8", "replace")
            entry["MESSAGE"] = message
            entries.append(entry)
        return entries

    def journal_text(self, after=None):
        return "\n".join(entry["MESSAGE"] for entry in self.journal(after))

    # Processes.

    def unit_pids(self, unit=UNIT):
        """Every process in the unit's cgroup (and below it)."""
        group = self.show(unit, "ControlGroup")["ControlGroup"]
        if not group:
            return []
        script = ('base=/sys/fs/cgroup/systemd; [ -d "$base" ] || base=/sys/fs/cgroup; '
                  'd="$base$1"; [ -d "$d" ] || exit 0; find "$d" -name cgroup.procs -exec cat {} +')
        return sorted(int(pid) for pid in self.run("sh", "-c", script, "-", group).stdout.split())

    def titles(self):
        """pid -> command line of every process in the container."""
        text = self.run("ps", "-eo", "pid=,args=").stdout
        return {int(pid): args for pid, _, args in (line.strip().partition(" ") for line in text.splitlines())}

    def vacd_processes(self):
        """The processes that are vacd's tree: titled `vacd…` or running the vacd script."""
        return {pid: args for pid, args in self.titles().items()
                if args.startswith("vacd") or f"{VENV}/bin/vacd" in args}

    def cgroups_of(self, pid):
        """/proc/PID/cgroup inside: hierarchy ("" for the unified one) -> path; empty if the process is gone."""
        text = self.run("sh", "-c", 'cat "/proc/$1/cgroup" 2>/dev/null || true', "-", str(pid)).stdout
        places = {}
        for line in text.splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                places[name] = path
        return places

    # vac.

    def vac_status(self):
        """`vac status --json` as a site's operator runs it."""
        return json.loads(self.run("vac", "status", "--json").stdout)

    def install_vac(self, log):
        """pip install vac from a copy of the checkout; the unit files as the README says."""
        source = self.shared_dir / "vac-src"
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(CHECKOUT / name, source / name)
        shutil.copytree(CHECKOUT / "vac", source / "vac", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        started = time.monotonic()
        self.run(f"{VENV}/bin/pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                 "--no-deps", "--no-build-isolation", str(source))
        log(f"vac installed into {VENV} in {time.monotonic() - started:.1f} s")
        for path in UNIT_FILES:
            shutil.copy2(CHECKOUT / path, self.shared_dir / Path(path).name)
            self.run("install", "-m", "0644", str(self.shared_dir / Path(path).name), "/etc/systemd/system/")
        self.systemctl("daemon-reload")

    def drop_in(self, name, text):
        """A runtime drop-in for vacd.service (a test's own settings); systemd reloaded."""
        self.run("mkdir", "-p", RUNTIME_DROP_IN_DIR)
        self.write(f"{RUNTIME_DROP_IN_DIR}/{name}.conf", text)
        self.systemctl("daemon-reload")

    def remove_drop_ins(self):
        self.run("rm", "-rf", RUNTIME_DROP_IN_DIR)
        self.systemctl("daemon-reload")


def remove_abandoned_containers(log):
    """Containers of earlier runs that were killed before they could remove theirs."""
    listing = subprocess.run(["docker", "ps", "--all", "--filter", f"label={CONTAINER_LABEL}", "--format",
                              f'{{{{.Names}}}} {{{{.Label "{RUN_LABEL}"}}}}'],
                             capture_output=True, text=True, timeout=60, check=False)
    for line in listing.stdout.splitlines():
        name, _, pid = line.partition(" ")
        if not pid.isdigit() or not os.path.exists(f"/proc/{pid}"):
            log(f"removing {name}, left by a run that is gone")
            remove_container(name)


def boot(image, shared_dir, log):
    """Start the container and wait until systemd says the system runs; a SystemdHost, or a reason why not."""
    remove_abandoned_containers(log)
    name = f"vac-test-systemd-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(run_argv(image, name, shared_dir), capture_output=True, text=True, timeout=120,
                            check=False)
    if result.returncode != 0:
        return f"the engine cannot start the container: {result.stderr.strip()[-600:]}"
    host = SystemdHost(name, shared_dir, detect().kind)
    started = time.monotonic()
    deadline = started + BOOT_SECONDS
    state = ""
    while time.monotonic() < deadline and container_runs(name):
        state = host.boot_state()
        if state in ("running", "degraded"):
            break
        time.sleep(0.2)
    else:
        logs = subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True, text=True,
                              timeout=60, check=False)
        remove_container(name)
        return (f"systemd did not boot in the container (state {state or 'unknown'}; {BOOT_SECONDS} s allowed):\n"
                f"{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
    log(f"systemd booted in {time.monotonic() - started:.1f} s ({state}) in {name}, cgroups {host.layout_kind}")
    if state == "degraded":
        failed = host.systemctl("--failed", "--plain", "--no-legend", check=False).stdout
        log(f"failed units at boot (not vac's):\n{failed}")
    return host


def container_runs(name):
    result = subprocess.run(["docker", "inspect", "--format", "{{.State.Running}}", name], capture_output=True,
                            text=True, timeout=60, check=False)
    return result.stdout.strip() == "true"


def remove_container(name):
    subprocess.run(["docker", "rm", "--force", "--volumes", name], capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def systemd_host(docker_client):
    """A booted systemd with vac installed; the session's tests skip, with the reason, where none can boot."""
    def log(text):
        print(f"systemd host: {text}")

    started = time.monotonic()
    try:
        image = ensure_image()
    except RootUnavailable as error:
        pytest.skip(f"no root to boot systemd from: {error}")
    log(f"root image {image} ready after {time.monotonic() - started:.1f} s")
    # Under /var/tmp, not /tmp (see the docstring); every account may pass through it.
    shared_dir = Path(tempfile.mkdtemp(prefix="vac-systemd-", dir="/var/tmp"))
    shared_dir.chmod(0o755)
    host = boot(image, shared_dir, log)
    if isinstance(host, str):
        shutil.rmtree(shared_dir, ignore_errors=True)
        pytest.skip(f"this engine cannot boot systemd: {host}")
    try:
        host.install_vac(log)
        yield host
    finally:
        remove_container(host.name)
        shutil.rmtree(shared_dir, ignore_errors=True)
