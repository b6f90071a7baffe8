"""Runs `python script.py ARGS` and `python -m module ARGS` in forks of one process that has
already imported torch: a command that ends early costs a fork, not the 3 s of imports.

The fork runs the same file as __main__ with the same argv, environment, working folder and
sys.path[0] as a fresh interpreter would, and exits through the interpreter's own end (exit
code, tracebacks, atexit); only the third-party imports below are shared.

    with Zygote(env) as zygote:
        code, out, err = zygote.run([sys.executable, "tools/train_net.py", ...], env, cwd)
"""

import json
import os
import socket
import subprocess
import sys
import tempfile

SERVER = r'''
import json, os, runpy, signal, socket, sys

import numpy, PIL.Image, torch, torchvision, yaml  # noqa: F401  (what every tool imports)


def serve(path):
    """Forks per request; returns the request in the fork that runs it (never in the server)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(64)
    print("ready", flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the waiters
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            break
        conn.close()
    server.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _, (request_fd, out_fd, err_fd), _, _ = socket.recv_fds(conn, 1, 3)
    with os.fdopen(request_fd) as f:
        request = json.load(f)
    pid = os.fork()
    if pid:  # the waiter: sends the runner's exit code (negative: killed by that signal)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        conn.sendall(str(code).encode())
        os._exit(0)
    conn.close()
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (out_fd, 1), (err_fd, 2)):
        os.dup2(fd, target)
    for fd in {null, out_fd, err_fd}:
        os.close(fd)
    return request


request = serve(sys.argv[1])
os.environ.clear()
os.environ.update(request["env"])
os.chdir(request["cwd"])
args = request["argv"][1:]
if args[0] == "-m":
    sys.argv, sys.path[0] = args[1:], os.getcwd()
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv, sys.path[0] = args, os.path.dirname(os.path.abspath(args[0]))
    runpy.run_path(args[0], run_name="__main__")
'''


def runs_here(argv):
    """Tells whether a command is one the zygote runs: this Python on a script or -m module."""
    return (
        len(argv) > 1 and argv[0] == sys.executable and (argv[1] == "-m" or argv[1][-3:] == ".py")
    )


class Zygote:
    """The process the commands fork from; its environment is that of its imports."""

    def __init__(self, env):
        self.folder = tempfile.mkdtemp(prefix="pycls_zygote_")
        self.path = os.path.join(self.folder, "sock")
        script = os.path.join(self.folder, "zygote.py")
        with open(script, "w") as f:
            f.write(SERVER)
        cmd = [sys.executable, script, self.path]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, argv, env, cwd, merged=False):
        """Runs a command; returns (exit code, stdout, stderr); merged: stderr goes to stdout."""
        with tempfile.TemporaryFile("w+") as request, tempfile.TemporaryFile() as out:
            with tempfile.TemporaryFile() as err:
                json.dump({"argv": argv, "env": env, "cwd": cwd}, request)
                request.flush()
                request.seek(0)
                fds = [request.fileno(), out.fileno(), (out if merged else err).fileno()]
                with socket.socket(socket.AF_UNIX) as conn:
                    conn.connect(self.path)
                    socket.send_fds(conn, [b"r"], fds)
                    code = int(b"".join(iter(lambda: conn.recv(64), b"")))
                out.seek(0)
                err.seek(0)
                text = [f.read().decode(errors="replace") for f in (out, err)]
        return code, text[0], None if merged else text[1]

    def close(self):
        """Ends the zygote (commands still running go on to their end)."""
        self.proc.terminate()
        self.proc.wait()
        self.proc.stdout.close()
        for name in os.listdir(self.folder):
            os.remove(os.path.join(self.folder, name))
        os.rmdir(self.folder)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
