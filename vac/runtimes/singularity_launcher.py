"""The launcher of a Singularity machine: joins its cgroups, drops to its account, records its end.

Run as ``python3 -I -S singularity_launcher.py PLAN`` (standard library only;
docs/singularity.md, "The launcher"). It forks: the first process waits for
the second to report the payload started ("PAYLOADPID STARTED_AT" on stdout,
exit 0) or why it did not (stderr, exit 1); the second, the launcher proper,
outlives whoever started it, copies the payload's output into output.log and
writes exit_status when the payload ends.
"""

import json
import os
import select
import signal
import sys
import time

USAGE = """usage: python3 -I -S singularity_launcher.py PLAN_JSON

Starts a Singularity machine's payload from the plan the runtime wrote: the
launcher joins the plan's launcher cgroups, the payload its payload cgroups
before it drops to the plan's account and executes the plan's argv. Prints
"PAYLOADPID STARTED_AT" and exits 0 once the payload runs; prints why it
could not start on stderr and exits 1 otherwise (2 for a bad command line).
launcher.pid, output.log and exit_status appear in the plan's "dir".
"""

READY_DEADLINE_SECONDS = 30  # the first process's wait for the launcher's report
DRAIN_AFTER_EXIT_SECONDS = 2  # output still read once the payload ended (a leftover may hold the pipe)
POLL_SECONDS = 0.5
SETUP_FAILED = 125  # the payload child could not join its cgroups or drop its privileges
EXEC_FAILED = 127
IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE)
RESTORED_SIGNALS = IGNORED_SIGNALS + (signal.SIGXFSZ,)  # Python itself ignores SIGPIPE and SIGXFSZ
PLAN_TYPES = {
    "argv": list, "env": dict, "user": str, "uid": int, "gid": int, "cwd": str, "mkdirs": list,
    "launcher_procs": list, "payload_procs": list, "dir": str, "log_limit_bytes": int,
}


class PlanError(Exception):
    """The plan cannot be used: nothing was started."""


def load_plan(path):
    """The plan from its JSON file, checked; PlanError says what is wrong."""
    try:
        with open(path, encoding="utf-8") as plan_file:
            plan = json.load(plan_file)
    except (OSError, ValueError) as error:
        raise PlanError(f"cannot read the plan {path}: {error}") from None
    if not isinstance(plan, dict):
        raise PlanError(f"the plan {path} is not a JSON object")
    for key, wanted in PLAN_TYPES.items():
        if not isinstance(plan.get(key), wanted) or isinstance(plan.get(key), bool):
            raise PlanError(f"the plan's {key!r} is missing or not a {wanted.__name__}")
    if plan["uid"] <= 0 or plan["gid"] <= 0:
        raise PlanError(f"refusing to run a payload as uid {plan['uid']} gid {plan['gid']}: root is not allowed")
    argv = plan["argv"]
    if not argv or not all(isinstance(item, str) for item in argv) or not os.path.isabs(argv[0]):
        raise PlanError("the plan's 'argv' must be strings, the first an absolute path")
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in plan["env"].items()):
        raise PlanError("the plan's 'env' must map strings to strings")
    for key in ("mkdirs", "launcher_procs", "payload_procs"):
        if not all(isinstance(item, str) and os.path.isabs(item) for item in plan[key]):
            raise PlanError(f"the plan's {key!r} must be absolute paths")
    if plan["log_limit_bytes"] < 0:
        raise PlanError("the plan's 'log_limit_bytes' is negative")
    return plan


def write_all(fd, data):
    """Write every byte of data to fd."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_text(path, text):
    """Write text to an existing file such as cgroup.procs or oom_score_adj."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        write_all(fd, text.encode())
    finally:
        os.close(fd)


def write_atomically(path, document):
    """Write document as JSON to path: a temporary file, fsync, rename, so readers see all or nothing."""
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, json.dumps(document).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def own_start_time():
    """Field 22 of /proc/self/stat: with the pid, tells this process from a later one with the same pid."""
    with open("/proc/self/stat", encoding="ascii") as stat:
        fields_after_name = stat.read().rsplit(")", 1)[1].split()
    return int(fields_after_name[19])  # the list starts at field 3 (state)


def wait_for_report(ready_read):
    """The first process: relay the launcher's report; the exit code for the runtime."""
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    report = b""
    while b"\n" not in report:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            print(f"the launcher did not report within {READY_DEADLINE_SECONDS} s", file=sys.stderr)
            return 1
        readable, _, _ = select.select([ready_read], [], [], remaining)
        chunk = os.read(ready_read, 4096) if readable else b""
        if readable and not chunk:
            break
        report += chunk
    line = report.decode(errors="replace").strip()
    word, _, rest = line.partition(" ")
    if word == "ok":
        print(rest, flush=True)
        return 0
    print(rest if word == "error" else f"the launcher ended without a report: {line!r}", file=sys.stderr)
    return 1


def detach_standard_streams():
    """Point 0, 1 and 2 at /dev/null: the runtime reads the first process's output until every copy closes."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def become_launcher(plan):
    """Join the launcher cgroups, resist signals and the OOM killer, record launcher.pid."""
    os.setsid()
    for directory in plan["mkdirs"]:
        os.makedirs(directory, exist_ok=True)
    for procs in plan["launcher_procs"]:
        try:
            write_text(procs, str(os.getpid()))
        except OSError as error:
            raise OSError(f"cannot join {procs}: {error}") from None
    try:
        write_text("/proc/self/oom_score_adj", "-1000")
    except PermissionError:
        pass  # root without CAP_SYS_RESOURCE (some containers): the launcher stays killable, no worse
    for signum in IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    pid_record = {"pid": os.getpid(), "start_time": own_start_time()}
    write_atomically(os.path.join(plan["dir"], "launcher.pid"), pid_record)


def run_payload(plan, output_write, exec_status_write):
    """The payload child: never returns. Errors go to exec_status_write (close-on-exec) and the output."""
    output = [output_write]  # where an error is also told: output.log, before and after the redirection

    def fail(message, code):
        data = f"{message}\n".encode(errors="replace")
        for fd in (exec_status_write, output[0]):
            try:
                write_all(fd, data)
            except OSError:
                pass
        os._exit(code)

    step = "joining the payload cgroups"
    try:
        # Still root: joined before anything else, so no process of the machine runs outside its cgroups.
        for procs in plan["payload_procs"]:
            step = f"writing to {procs}"
            write_text(procs, str(os.getpid()))
        step = "resetting oom_score_adj"
        write_text("/proc/self/oom_score_adj", "0")
        for signum in RESTORED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        step = f"dropping to {plan['user']} ({plan['uid']}:{plan['gid']})"
        uid, gid = plan["uid"], plan["gid"]
        os.initgroups(plan["user"], gid)
        os.setgid(gid)
        os.setuid(uid)
        if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (uid, uid, gid, gid) or 0 in os.getgroups():
            fail(f"privileges not dropped to {uid}:{gid} (groups {os.getgroups()})", SETUP_FAILED)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            fail("root could be regained after dropping privileges", SETUP_FAILED)
        step = f"changing to {plan['cwd']}"
        os.chdir(plan["cwd"])
        step = "redirecting stdin, stdout and stderr"
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output_write, 1)
        os.dup2(output_write, 2)
        output[0] = 2
        if exec_status_write != 3:
            os.dup2(exec_status_write, 3, inheritable=False)
            exec_status_write = 3
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
    except (OSError, KeyError) as error:
        fail(f"payload setup failed {step}: {error}", SETUP_FAILED)
    try:
        os.execve(plan["argv"][0], plan["argv"], plan["env"])
    except OSError as error:
        fail(f"cannot execute {plan['argv'][0]}: {error}", EXEC_FAILED)


def read_exec_status(exec_status_read, payload_pid):
    """Wait (bounded) until the payload executed its program: '' on success, else why not."""
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    message = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            os.kill(payload_pid, signal.SIGKILL)
            return f"the payload did not start within {READY_DEADLINE_SECONDS} s and was killed"
        readable, _, _ = select.select([exec_status_read], [], [], remaining)
        chunk = os.read(exec_status_read, 4096) if readable else b""
        if readable and not chunk:
            return message.decode(errors="replace").strip()
        message += chunk


def open_log(plan):
    """output.log (0640), or None when it cannot be made: the output is then dropped."""
    path = os.path.join(plan["dir"], "output.log")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        os.fchmod(fd, 0o640)
        return fd
    except OSError:
        return None


def copy_output(plan, output_read, payload_pid):
    """Copy the payload's output into output.log up to the limit; the payload's wait status."""
    log_fd = open_log(plan)
    limit = plan["log_limit_bytes"]
    written = dropped = 0
    status = None
    drain_deadline = None
    while True:
        readable, _, _ = select.select([output_read], [], [], POLL_SECONDS)
        if readable:
            chunk = os.read(output_read, 65536)
            if not chunk:
                break
            kept = chunk[:max(limit - written, 0)]
            dropped += len(chunk) - len(kept)
            if kept and log_fd is not None:
                try:
                    write_all(log_fd, kept)
                except OSError:
                    log_fd = None
            written += len(kept)
        if status is None:
            reaped, wait_status = os.waitpid(payload_pid, os.WNOHANG)
            if reaped:
                status = wait_status
                drain_deadline = time.monotonic() + DRAIN_AFTER_EXIT_SECONDS
        if drain_deadline is not None and time.monotonic() > drain_deadline:
            break  # something the payload left behind still holds the pipe
    if dropped and log_fd is not None:
        note = f"\n[launcher: {dropped} more bytes of output dropped beyond the {limit}-byte limit]\n"
        try:
            write_all(log_fd, note.encode())
        except OSError:
            pass
    if log_fd is not None:
        os.close(log_fd)
    if status is None:
        _, status = os.waitpid(payload_pid, 0)  # its output closed: it is ending
    return status


def exit_record(wait_status, finished_at):
    """exit_status's document: a signal's death as 128+signal, as a shell reports it."""
    if os.WIFSIGNALED(wait_status):
        signum = os.WTERMSIG(wait_status)
        return {"exit_code": 128 + signum, "signal": signum, "finished_at": finished_at}
    return {"exit_code": os.WEXITSTATUS(wait_status), "signal": None, "finished_at": finished_at}


def launcher(plan, ready_write):
    """The launcher proper: start the payload, report to the first process, record the end."""
    try:
        become_launcher(plan)
        output_read, output_write = os.pipe2(os.O_CLOEXEC)
        exec_status_read, exec_status_write = os.pipe2(os.O_CLOEXEC)
        payload_pid = os.fork()
    except (OSError, ValueError, IndexError) as error:
        write_all(ready_write, f"error launcher setup failed: {error}\n".encode(errors="replace"))
        return 1
    if payload_pid == 0:
        os.close(ready_write)
        os.close(output_read)
        os.close(exec_status_read)
        run_payload(plan, output_write, exec_status_write)
    os.close(output_write)
    os.close(exec_status_write)
    failure = read_exec_status(exec_status_read, payload_pid)
    os.close(exec_status_read)
    report = f"error {failure}" if failure else f"ok {payload_pid} {time.time()}"
    try:
        write_all(ready_write, f"{report}\n".encode(errors="replace"))
    except OSError:
        pass  # the first process is gone; the payload runs anyway
    os.close(ready_write)
    try:
        wait_status = copy_output(plan, output_read, payload_pid)
    except OSError:
        wait_status = os.waitpid(payload_pid, 0)[1]  # the output is lost, the exit status must not be
    write_atomically(os.path.join(plan["dir"], "exit_status"), exit_record(wait_status, time.time()))
    return 0


def main(argv=None):
    """Entry point: the first process's exit code (the launcher proper never returns here)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["--help"], ["-h"]):
        print(USAGE, end="")
        return 0
    if len(argv) != 1:
        print(USAGE, end="", file=sys.stderr)
        return 2
    try:
        plan = load_plan(argv[0])
    except PlanError as error:
        print(error, file=sys.stderr)
        return 1
    ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() != 0:
        os.close(ready_write)
        return wait_for_report(ready_read)
    code = 1
    try:
        os.close(ready_read)
        detach_standard_streams()
        code = launcher(plan, ready_write)
    finally:
        os._exit(code)  # a forked launcher never returns into the caller's code


if __name__ == "__main__":
    sys.exit(main())
