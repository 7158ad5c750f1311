"""The `flowctl` command, also run as `python -m flowctl`."""

import sys

# The exit code of a command ended by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def main() -> None:
    """Run the command line.

    Ctrl-C while the command line is still being imported ends flowctl
    with exit code 130 instead of a traceback.
    """
    try:
        from flowctl.cli import main as command_line
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    command_line()


if __name__ == "__main__":
    main()
