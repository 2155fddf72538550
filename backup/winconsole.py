"""Ctrl-Break for a daemon on a console of its own (Windows): litestream's clean stop.

litestream handles only os.Interrupt on Windows: Ctrl-C or Ctrl-Break, which
Windows delivers to the processes of one console. A daemon started detached
(``litestream.popen_flags``: a new process group, a console with no window) shares
no console with the command that stops it, so ``os.kill(pid, CTRL_BREAK_EVENT)``
there either fails or reaches nobody. This module runs as a short-lived helper
(``python -m backup.winconsole PID``, started with no console of the caller's): it
leaves its own console, attaches to the daemon's, and sends Ctrl-Break to the daemon's
process group (its pid: it leads the group), of which the helper is not a member.
"Delivered" means Windows accepted the event; the stop still waits to see it work.
"""
from __future__ import annotations

import sys
from typing import Any

CTRL_BREAK_EVENT = 1
# The helper's exit codes: what failed, for the stop's message.
DELIVERED, NO_CONSOLE, NOT_SENT = 0, 3, 4


def send_ctrl_break(pid: int, kernel32: Any = None) -> int:
    """Deliver Ctrl-Break to the process group ``pid`` leads; an exit code above."""
    if kernel32 is None:
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.FreeConsole()  # AttachConsole fails while attached to one
    if not kernel32.AttachConsole(pid):
        return NO_CONSOLE  # it has none (started detached), or is gone
    # Ctrl-C ignored here while attached (the Ctrl-Break goes to the daemon's group only,
    # which this helper is not in).
    kernel32.SetConsoleCtrlHandler(None, True)
    sent = kernel32.GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid)
    kernel32.FreeConsole()
    return DELIVERED if sent else NOT_SENT


if __name__ == "__main__":
    sys.exit(send_ctrl_break(int(sys.argv[1])))
