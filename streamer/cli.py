"""livereel: interactive, never-ending video generation, streamed live to the browser.

(For us: a subcommand module exposes `add_arguments(parser)` and `main(args) -> int`; the
table below maps names to modules, and only the chosen one is imported, so `livereel
--help` stays fast. Every command ends cleanly on Ctrl-C (exit 130) and SIGTERM (143):
one line, no traceback, and its `finally` blocks run, so no temporary file is left.)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("streamer.server", "stream live to the browser over WebRTC"),
    "worker": ("streamer.cluster.join", "join a Ray cluster as a worker of `serve --ray` (cluster mode)"),
    "demo": ("streamer.demo", "run the Gradio demo"),
    "export": ("streamer.export", "render a timeline JSON to an MP4"),
    "replay": ("streamer.replay", "render a recorded session log to an MP4"),
    "sample": ("model.sample", "generate one clip from a prompt to an MP4"),
    "train": ("model.train.cli", "train the VAE or the causal DiT"),
    "eval": ("model.eval", "control-fidelity metrics on the world or a checkpoint"),
    "bench": ("bench.run", "latency, throughput and efficiency benchmarks"),
    "inspect": ("model.inspect", "what a checkpoint holds and what else it needs to run"),
}
EXIT_AT_ONCE = {"demo"}
"""Commands whose libraries leave daemon threads behind (Gradio's server): the process
ends at once after the command's own cleanup, not through the interpreter's shutdown,
which stops such a thread where it stands; inside C++ code (numpy, torch) that aborts the
process ("terminate called without an active exception", exit -6)."""


class HelpFormatter(argparse.HelpFormatter):
    """Each flag's default in its help, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings
                or isinstance(action.default, (list, tuple)) and not action.default):
            return text
        return f"{text} (default: %(default)s)"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C (a
    BaseException: no `except Exception` swallows it)."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def build_parser(command: str | None = None, add_help: bool = True
                 ) -> tuple[argparse.ArgumentParser, object, argparse.ArgumentParser | None]:
    """The parser, with the flags of `command` (if given) filled in from its module; the
    module and the command's own parser."""
    parser = argparse.ArgumentParser(prog="livereel", description=__doc__.splitlines()[0],
                                     add_help=add_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # the first pass (add_help=False) only finds the command; the second one validates
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=add_help)
    module, chosen = None, None
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, add_help=add_help,
                           formatter_class=HelpFormatter)
        if name == command:
            chosen = p
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if e.name != module_name:
                    raise
                continue
            module.add_arguments(p)
    return parser, module, chosen


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not sys.stderr.isatty():  # progress bars are for people watching; a log gets the lines only
        os.environ.setdefault("TQDM_DISABLE", "1")  # (read when tqdm is imported: before any command's module)
    first, _ = build_parser(add_help=False)[0].parse_known_args(argv)
    parser, module, command = build_parser(first.command)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a typo in a command's flag: that command's usage, not the top level's
        (command or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if module is None:
        print(f"livereel {args.command}: not available in this build yet", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = int(module.main(args) or 0)
    except KeyboardInterrupt:
        print(f"livereel {args.command}: interrupted", file=sys.stderr)
        code = 130
    except Terminated:
        print(f"livereel {args.command}: terminated", file=sys.stderr)
        code = 143
    if args.command in EXIT_AT_ONCE:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
