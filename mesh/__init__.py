"""mesh: a service mesh and networking data plane."""

# The signal module's builtin core: the signal module itself imports enum, and an interrupt
# during that import would be the traceback this guard is here to prevent.
import _signal  # type: ignore[import-not-found]
import os
import sys


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C before a command has a better answer (a serving one stops cleanly once it
    serves, mesh/run.py): end the process as an unhandled interrupt does, killed by SIGINT
    (the shell's status 130), with no traceback. Not a KeyboardInterrupt: one raised inside
    an import's cleanup or a finaliser is printed and lost, and the command would run on."""
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    os.kill(os.getpid(), _signal.SIGINT)


def _is_the_command() -> bool:
    """Whether this process is the ``mesh`` command (its script, or ``python -m
    mesh.cli``), not a program that imports the package."""
    argv = getattr(sys, "orig_argv", sys.argv)
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "mesh.cli":
        return True
    return os.path.basename(sys.argv[0]) == "mesh"


# First thing of every mesh command, before the imports that take most of its start.
if _is_the_command() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _interrupted)
