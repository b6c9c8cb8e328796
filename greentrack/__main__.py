"""``python -m greentrack`` and the ``greentrack`` command: :func:`greentrack.cli.main`.

A Ctrl-C while the tool itself is still loading (before :func:`~greentrack.cli.main` takes the
signals: ~0.1 s, longer on a loaded host) ends it with the shell's code for an interrupt and no
traceback: nothing has started and nothing is made.
"""

import sys


def run() -> int:
    try:
        from greentrack.cli import main  # inside the try: a Ctrl-C while it loads is caught
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as a shell reports an interrupted command
    return main()


if __name__ == "__main__":
    sys.exit(run())
