#!/usr/bin/env python3
"""Runs a command on a fresh pseudo-terminal (stdin, stdout and stderr all the terminal, as in
an interactive shell), answers each prompt that contains a given word, and prints everything
the terminal showed, then `exit=<code>`. Used by tests/cli.rs for `wsgate hash-password`.

usage: pty_run.py WORD=ANSWER [WORD=ANSWER ...] -- COMMAND [ARGS...]
"""
import os
import pty
import select
import signal
import sys
import time

sep = sys.argv.index("--")
answers = [a.split("=", 1) for a in sys.argv[1:sep]]
cmd = sys.argv[sep + 1:]

pid, fd = pty.fork()
if pid == 0:
    os.execv(cmd[0], cmd)

seen = b""
since_answer = b""  # output after the last answer: a prompt is looked for only there
pending = list(answers)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.5)
    if not ready:
        continue
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break  # EIO: the child closed the terminal
    if not chunk:
        break
    seen += chunk
    since_answer += chunk
    if pending and pending[0][0].encode() in since_answer:
        _, answer = pending.pop(0)
        since_answer = b""
        # A person answers after reading the prompt; text typed before the program has turned
        # echo off (type-ahead) is echoed by every password prompt, ssh and passwd included.
        time.sleep(0.3)
        os.write(fd, answer.encode() + b"\r")
if time.monotonic() >= deadline:
    # A prompt that never came: the child is still waiting for input.
    os.kill(pid, signal.SIGKILL)
    seen += b"\n(pty_run: timed out waiting for a prompt)"
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.stdout.write("\nexit=%d\n" % os.waitstatus_to_exitcode(status))
