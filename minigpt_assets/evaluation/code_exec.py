"""Functional correctness of generated code, HumanEval style: problems, a sandbox to run candidates, pass@k.

A candidate runs as `prompt + completion + test + check(entry_point)` (as openai/human-eval does) in a sandbox
built in layers, each used when the kernel and our privileges allow it (`sandbox_layers()` says which):

1. a fresh interpreter in its own session, with a clean environment, in a fresh directory deleted afterwards;
   the launcher enforces the wall-clock timeout, the host kills the process group as a backstop;
2. rlimits: address space, CPU seconds, file size, open files, processes, no core dumps;
3. namespaces ("namespaces" mode): network (a loopback that is down: no network at all), PID (killing its init
   kills all the candidate started, even processes that left the process group), mount (every mount read-only
   but the sandbox directory, there a size-limited tmpfs; a private /proc), IPC, UTS; for a normal user inside
   a user namespace;
4. no privileges: as root the candidate runs as `nobody` (root ignores RLIMIT_NPROC and file permissions),
   always with no_new_privs (setuid programs give nothing);
5. a Python guard prepended to the program (after human-eval's reliability_guard). `import posix` or ctypes
   bypass it: it stops accidents only, the layers above stop attacks.

Without namespaces (a container without CAP_SYS_ADMIN, user namespaces disabled) the "plain" mode keeps layers
1, 2, 4 and 5, the launcher being a child subreaper that kills every descendant. The launcher is this file run
as a script (`_launcher`): standard library only, no torch, no dagster.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
# limits on a candidate besides time and memory (TMPFS_MB: its directory in a mount namespace)
NPROC, NOFILE, FSIZE_MB, TMPFS_MB, DETAIL_CHARS = 32, 64, 32, 64, 300


@dataclass(frozen=True)
class CodeProblem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # passed | failed (assertion, exception) | timeout | killed (signal) | error (sandbox)
    detail: str = ""


def load_humaneval(path) -> list[CodeProblem]:
    """Problems of a HumanEval-format .jsonl (or .jsonl.gz) file, in file order."""
    from minigpt_assets.evaluation.jsonl import iter_jsonl

    problems, seen = [], set()
    for lineno, row in iter_jsonl(path):
        bad = [k for k in FIELDS if not isinstance(row.get(k), str)]
        if bad:
            raise ValueError(f"{path}:{lineno}: expected a JSON object with string fields "
                             f"{', '.join(FIELDS)} (missing or not a string: {', '.join(bad)})")
        if row["task_id"] in seen:
            raise ValueError(f"{path}:{lineno}: duplicate task_id {row['task_id']!r}")
        seen.add(row["task_id"])
        problems.append(CodeProblem(**{k: row[k] for k in FIELDS}))
    return problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021), n samples, c correct: 1 - C(n-c, k) / C(n, k), computed stably."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


GUARD = '''\
def _sandbox_guard():  # bypassable last layer: stops accidents, not attacks (the OS layers do that)
    import builtins, faulthandler, os, shutil, socket, subprocess, sys

    def blocked(*args, **kwargs):
        raise PermissionError("disabled in the code-execution sandbox")

    faulthandler.disable()
    for name in ("fork", "forkpty", "system", "popen", "kill", "killpg", "remove", "unlink", "rmdir",
                 "removedirs", "rename", "renames", "replace", "truncate", "chmod", "fchmod", "chown",
                 "fchown", "lchown", "chroot", "setuid", "execv", "execve", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            setattr(os, name, blocked)
    shutil.rmtree = shutil.move = shutil.chown = blocked
    # subclasses, so that modules subclassing them at import (ssl, asyncio) still import
    subprocess.Popen = type("Popen", (subprocess.Popen,), {"__init__": blocked, "__del__": lambda self: None})
    socket.socket = type("socket", (socket.socket,), {"__init__": blocked})
    socket.create_connection = socket.socketpair = socket.fromfd = blocked
    builtins.exit = builtins.quit = builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


_sandbox_guard()
del _sandbox_guard
'''


def build_program(problem: CodeProblem, completion: str) -> str:
    """The program human-eval runs for one completion (the guard is prepended when it runs)."""
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})\n"


def check_program(problem: CodeProblem, completion: str, timeout_s: float = 3.0, memory_mb: int = 1024,
                  mode: str | None = None) -> ExecResult:
    """Run one completion against its problem's tests in the sandbox; `mode` "namespaces", "plain" or None
    (the strongest that works here)."""
    return _run(GUARD + build_program(problem, completion), timeout_s, memory_mb, mode or _auto_mode())[0]


def evaluate_samples(problems, samples: dict[str, list[str]], ks=(1, 10), workers: int = 2,
                     timeout_s: float = 3.0, memory_mb: int = 1024, mode: str | None = None):
    """Run every sample (`workers` sandboxes at a time). Returns per-problem rows (task_id, n, correct,
    statuses, pass@k for each k <= n) and a summary: mean pass@k over the problems with at least k samples,
    status counts and the sandbox layers used."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    by_id = {p.task_id: p for p in problems}
    if unknown := sorted(set(samples) - set(by_id)):
        raise ValueError(f"samples for unknown task_ids: {', '.join(unknown[:5])}")
    mode = mode or _auto_mode()
    jobs = [(tid, i) for tid in samples for i in range(len(samples[tid]))]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = pool.map(lambda j: check_program(by_id[j[0]], samples[j[0]][j[1]], timeout_s, memory_mb, mode),
                        jobs)
        results = dict(zip(jobs, done))
    rows = []
    for tid, completions in samples.items():
        statuses = [results[tid, i].status for i in range(len(completions))]
        n, c = len(statuses), statuses.count("passed")
        rows.append({"task_id": tid, "n": n, "correct": c, "statuses": statuses,
                     **{f"pass@{k}": pass_at_k(n, c, k) for k in ks if 1 <= k <= n}})
    counts = dict(Counter(s for row in rows for s in row["statuses"]))
    summary = {"problems": len(rows), "samples": len(jobs), "statuses": counts,
               "missing_problems": len(set(by_id) - set(samples)), "layers": sandbox_layers(mode)}
    for k in ks:
        if vals := [r[f"pass@{k}"] for r in rows if f"pass@{k}" in r]:
            summary[f"pass@{k}"] = sum(vals) / len(vals)
    return rows, summary


_PROBES: dict[str, tuple[ExecResult, dict]] = {}
_PROBE_LOCK = threading.Lock()


def _probe(mode: str) -> tuple[ExecResult, dict]:
    with _PROBE_LOCK:
        if mode not in _PROBES:
            _PROBES[mode] = result, layers = _run("pass\n", 10.0, 256, mode)
            if result.passed and not layers["unprivileged"]:
                warnings.warn(f"code sandbox ({mode} mode): candidates run as root (nobody could not reach "
                              "the interpreter); only rlimits and the Python guard protect this host")
        return _PROBES[mode]


def _auto_mode() -> str:
    return "namespaces" if _probe("namespaces")[0].passed else "plain"


def sandbox_layers(mode: str | None = None) -> dict[str, bool]:
    """The layers a sandbox of this mode (default: the automatic one) has here, probed once per process;
    "available" is False when the mode cannot even run a trivial program here."""
    result, layers = _probe(mode or _auto_mode())
    return {"available": result.passed, **layers}


def _exposures(workdir: str) -> list[tuple[str, list[str]]]:
    """As root dropping to nobody: directories nobody cannot traverse (e.g. /root, home of a pyenv python) to
    cover with a tmpfs in the mount namespace, and the paths the candidate needs below them, to bind back."""
    needed = {workdir}
    for p in (os.path.dirname(sys.executable), sys.prefix, sys.base_prefix, sys.exec_prefix,
              sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))):
        needed |= {os.path.abspath(p), os.path.realpath(p)}
    needed = sorted(p for p in needed if os.path.isdir(p))
    groups: dict[str, list[str]] = {}
    for p in needed:  # sorted: a parent comes before its children
        parts = p.split("/")
        closed = next((d for d in ("/".join(parts[:i]) or "/" for i in range(1, len(parts) + 1))
                       if not os.stat(d).st_mode & 0o001), None)
        if closed not in (None, "/", p):
            kept = groups.setdefault(closed, [])
            if not any(p.startswith(q + "/") for q in kept):
                kept.append(p)
    return sorted(groups.items())


def _run(program: str, timeout_s: float, memory_mb: int, mode: str) -> tuple[ExecResult, dict]:
    if mode not in ("namespaces", "plain"):
        raise ValueError(f"unknown sandbox mode {mode!r}")
    root, workdir = os.getuid() == 0, tempfile.mkdtemp(prefix="minigpt-sbx-")
    try:
        return _run_in(program, timeout_s, memory_mb, mode, root, workdir)
    finally:
        _force_rmtree(workdir)


def _run_in(program: str, timeout_s: float, memory_mb: int, mode: str, root: bool, workdir: str):
    prog = os.path.join(workdir, "prog.py")
    with open(prog, "w", encoding="utf-8") as f:
        f.write(program)
    exposures = _exposures(workdir) if root else []
    # without a mount namespace to expose the interpreter, nobody may be unable to start it: then stay root
    drop = root and (mode == "namespaces" or not exposures)
    try:
        nobody = [pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid]
    except KeyError:
        nobody = [65534, 65534]
    if drop:
        os.chown(workdir, *nobody)
        os.chown(prog, *nobody)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r, w = os.pipe()  # the launcher's (and its init's) status reports, one JSON object a line
    cfg = {"mode": mode, "dir": workdir, "prog": prog, "status_fd": w, "timeout": timeout_s, "env": env,
           "memory_mb": memory_mb, "drop": nobody if drop else None, "expose": exposures,
           "python": sys.executable, "host_pid": os.getpid()}
    layers = {"subprocess": True, "rlimits": True, "python_guard": True, "no_new_privs": True,
              "unprivileged": not root or drop, "user_namespace": False, "pid_namespace": False,
              "net_namespace": False, "mount_namespace": False, "readonly_fs": False, "private_proc": False}
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:  # -I: no environment, no user site; -S: the launcher needs the standard library only
                proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", os.path.abspath(__file__),
                                         json.dumps(cfg)], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        pass_fds=(w,), start_new_session=True, env=env, cwd=workdir)
            finally:
                os.close(w)
            try:
                proc.wait(timeout_s + 10)  # the launcher enforces timeout_s itself; this is a backstop
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group (the launcher too if hung)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            os.set_blocking(r, False)  # the reports are small and all written by now
            try:
                data = os.read(r, 1 << 20)
            except BlockingIOError:
                data = b""
            msgs = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            for m in msgs:
                layers.update(m.get("layers", {}))
            err.seek(max(0, err.seek(0, os.SEEK_END) - 4096))
            tail = [ln.strip() for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            detail = tail[-1][:DETAIL_CHARS] if tail else ""
            return _classify(msgs, proc.returncode, detail, timeout_s), layers
    finally:
        os.close(r)


def _classify(msgs: list[dict], launcher_rc: int, stderr_tail: str, timeout_s: float) -> ExecResult:
    merged = {k: v for m in msgs for k, v in m.items()}
    if "error" in merged:
        return ExecResult(False, "error", str(merged["error"])[:DETAIL_CHARS])
    if "exit" in merged:
        if merged["exit"] == 0:
            return ExecResult(True, "passed")
        return ExecResult(False, "failed", stderr_tail or f"exit status {merged['exit']}")
    if "signal" in merged:
        if merged["signal"] == signal.SIGXCPU:
            return ExecResult(False, "timeout", "CPU time limit exceeded")
        try:
            name = signal.Signals(merged["signal"]).name
        except ValueError:
            name = f"signal {merged['signal']}"
        return ExecResult(False, "killed", f"killed by {name}" + (f": {stderr_tail}" if stderr_tail else ""))
    if merged.get("timeout") or launcher_rc == -signal.SIGKILL:
        return ExecResult(False, "timeout", f"timed out after {timeout_s:g}s")
    return ExecResult(False, "error", f"sandbox launcher gave no status (exit {launcher_rc}): {stderr_tail}")


def _force_rmtree(path: str) -> None:
    import shutil
    if os.getuid() != 0:  # a candidate may have left directories without permissions (never follow links)
        for parent, dirs, _ in os.walk(path):
            for d in dirs:
                if not os.path.islink(os.path.join(parent, d)):
                    try:
                        os.chmod(os.path.join(parent, d), 0o700)
                    except OSError:
                        pass
    shutil.rmtree(path, ignore_errors=True)


# -------------------------------------------------------------------------- the launcher (a child process)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_PRIVATE = 1 << 18
# per-mount flags a read-only remount must keep (inside a user namespace they are locked)
MS_KEEP = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024, "nodiratime": 2048,
           "relatime": 1 << 21}
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38


def _libc(name: str, *args) -> None:
    """unshare, mount or prctl through ctypes (os.unshare is Python 3.12+); OSError on failure."""
    import ctypes
    fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    fn.argtypes = {"mount": [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p],
                   "prctl": [ctypes.c_int] + [ctypes.c_ulong] * 4, "unshare": [ctypes.c_int]}[name]
    args = [a.encode() if isinstance(a, str) else a for a in args]
    if fn(*args, *[0] * (len(fn.argtypes) - len(args))) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}{tuple(args)[:2]}: {os.strerror(err)}")


def _mounts() -> dict[str, list[str]]:
    """Visible mount points (the topmost mount at each path) and their per-mount options."""
    import re
    with open("/proc/self/mountinfo") as f:
        return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), ln.split()[4]): ln.split()[5].split(",")
                for ln in f}


def _enter_namespaces(cfg: dict, layers: dict) -> None:
    uid, gid = os.getuid(), os.getgid()
    # a normal user needs a user namespace for the others (our uid mapped to itself, so no new rights)
    _libc("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
          | (CLONE_NEWUSER if uid else 0))
    if uid:
        for name, text in ("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    layers.update(user_namespace=bool(uid), pid_namespace=True, net_namespace=True, mount_namespace=True)
    _libc("mount", None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing done here propagates to the host
    for closed, paths in cfg["expose"]:  # a tmpfs over e.g. /root, with just the interpreter bound back
        fds = [os.open(p, os.O_PATH) for p in paths]
        _libc("mount", "tmpfs", closed, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=64k")
        for p, fd in zip(paths, fds):
            os.makedirs(p, 0o755, exist_ok=True)
            _libc("mount", f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC, None)
    # the sandbox directory becomes a size-limited tmpfs: the only writable place, gone with the namespace
    sandbox, owner = cfg["dir"], ",uid={},gid={}".format(*cfg["drop"]) if cfg["drop"] else ""
    with open(cfg["prog"], "rb") as f:
        program = f.read()
    _libc("mount", "tmpfs", sandbox, "tmpfs", MS_NOSUID | MS_NODEV, f"size={TMPFS_MB}m,mode=700{owner}")
    with open(cfg["prog"], "wb") as f:
        f.write(program)
    for target, opts in _mounts().items():
        if target != sandbox and "ro" not in opts:
            try:  # MS_BIND|MS_REMOUNT: this mount's flags only, never the filesystem's (which the host sees)
                flags = MS_BIND | MS_REMOUNT | MS_RDONLY | sum(v for k, v in MS_KEEP.items() if k in opts)
                _libc("mount", None, target, None, flags, None)
            except OSError:
                pass
    layers["readonly_fs"] = all("ro" in opts for target, opts in _mounts().items() if target != sandbox)


def _exec_candidate(cfg: dict, report) -> None:
    import resource
    if cfg["drop"]:
        uid, gid = cfg["drop"]
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    os.chdir(cfg["dir"])  # after the mounts: the tmpfs, not the directory below it
    # rlimits after the uid change (over RLIMIT_NPROC at setuid, execve would fail)
    cpu, mem, fsize = math.ceil(cfg["timeout"]) + 1, cfg["memory_mb"] << 20, FSIZE_MB << 20
    for res, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu, cpu + 1),
                            (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_CORE, 0, 0),
                            (resource.RLIMIT_NOFILE, NOFILE, NOFILE), (resource.RLIMIT_NPROC, NPROC, NPROC)):
        resource.setrlimit(res, (soft, hard))
    _libc("prctl", PR_SET_NO_NEW_PRIVS, 1)
    _libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
    # -s -P instead of -I: -I would ignore PYTHONHASHSEED, and the environment is ours anyway
    os.execve(cfg["python"], [cfg["python"], "-s", "-P", cfg["prog"]], cfg["env"])


def _status(wait_status: int) -> dict:
    if os.WIFSIGNALED(wait_status):
        return {"signal": os.WTERMSIG(wait_status)}
    return {"exit": os.waitstatus_to_exitcode(wait_status)}


def _init(cfg: dict, report) -> None:
    """PID 1 of the sandbox's PID namespace: mounts its /proc, runs the candidate and reports how it ended.
    When it exits, the kernel kills whatever is left in the namespace."""
    try:
        _libc("unshare", CLONE_NEWNS)  # this /proc is the sandbox's only: the launcher keeps the host's
        _libc("mount", "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, None)
        report(layers={"private_proc": True})
    except OSError:
        pass
    pid = os.fork()
    if pid == 0:
        _child(_exec_candidate, cfg, report)
    while True:  # reap orphans until the candidate itself ends
        done, wait_status = os.waitpid(-1, 0)
        if done == pid:
            return report(**_status(wait_status))


def _child(fn, cfg: dict, report) -> None:
    code = 127
    try:
        fn(cfg, report)
        code = 0
    except BaseException as e:  # noqa: BLE001 - report it, never return into the parent's code
        report(error=f"sandbox child: {type(e).__name__}: {e}")
    finally:
        os._exit(code)


def _kill_descendants() -> None:
    """Kill and reap all below us. As a child subreaper every orphan is re-parented here, even one that left
    the process group; RLIMIT_NPROC bounds how many can appear meanwhile."""
    for _ in range(500):
        parent_of = {}
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent_of[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
        found, frontier = set(), {os.getpid()}
        while frontier:
            frontier = {p for p, pp in parent_of.items() if pp in frontier} - found
            found |= frontier
        if not found:
            return
        for p in found:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.002)


def _launcher(cfg: dict) -> None:
    fd = cfg["status_fd"]
    os.set_inheritable(fd, False)  # the candidate's exec closes it

    def report(**msg):
        os.write(fd, (json.dumps(msg) + "\n").encode())

    layers: dict = {}
    try:
        os.umask(0o022)
        if cfg["mode"] == "namespaces":
            _enter_namespaces(cfg, layers)
        _libc("prctl", PR_SET_CHILD_SUBREAPER, 1)
        _libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the host (after unshare, which clears it)
        if os.getppid() != cfg["host_pid"]:
            return
    except OSError as e:
        return report(error=f"sandbox setup failed ({cfg['mode']} mode): {e}")
    report(layers=layers)
    deadline = time.monotonic() + cfg["timeout"]
    pid = os.fork()
    if pid == 0:
        _child(_init if cfg["mode"] == "namespaces" else _exec_candidate, cfg, report)
    while not (done := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)  # the candidate, or the namespace's init and with it everything
            os.waitpid(pid, 0)
            report(timeout=True)
            break
        time.sleep(0.005)
    else:
        if cfg["mode"] == "plain":  # in a PID namespace the init reports
            report(**_status(done[1]))
    _kill_descendants()


if __name__ == "__main__":
    _launcher(json.loads(sys.argv[1]))
