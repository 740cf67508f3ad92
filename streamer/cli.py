"""The `livereel` command: one subcommand per module, each module owning its flags.

A subcommand module exposes `add_arguments(parser)` and `main(args) -> int`. The table
below maps names to modules; only the chosen subcommand's module is imported, so
`livereel --help` stays fast and one part's import cost is not paid by the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("streamer.server", "stream live to the browser over WebRTC"),
    "demo": ("streamer.demo", "run the Gradio demo"),
    "export": ("streamer.export", "render a timeline JSON to an MP4"),
    "replay": ("streamer.replay", "render a recorded session log to an MP4"),
    "sample": ("model.sample", "generate one clip from a prompt to an MP4"),
    "train": ("model.train.cli", "train the VAE or the causal DiT"),
    "eval": ("model.eval", "control-fidelity metrics on the world or a checkpoint"),
    "bench": ("bench.run", "latency, throughput and efficiency benchmarks"),
    "inspect": ("model.inspect", "what a checkpoint holds and what else it needs to run"),
}


def build_parser(command: str | None = None, add_help: bool = True
                 ) -> tuple[argparse.ArgumentParser, object]:
    """The parser, with the flags of `command` (if given) filled in from its module."""
    parser = argparse.ArgumentParser(prog="livereel", description=__doc__.splitlines()[0],
                                     add_help=add_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # the first pass (add_help=False) only finds the command; the second one validates
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=add_help)
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, add_help=add_help)
        if name == command:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if e.name != module_name:
                    raise
                continue
            module.add_arguments(p)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first, _ = build_parser(add_help=False)[0].parse_known_args(argv)
    parser, module = build_parser(first.command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if module is None:
        print(f"livereel {args.command}: not available in this build yet", file=sys.stderr)
        return 2
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
