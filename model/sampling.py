"""How chunks are sampled: one settings object and the flags every command shares.

Torch-free (as `import model` is), so that a command can check its flags before it
loads the model and torch.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.checkpoint import LiveReel
    from model.generate import Generator


class SamplingError(ValueError):
    """A bad sampling setting: `field` (steps, warm_start, guidance, anchor or rewrite) and what is wrong,
    said of `subject` (default: the field; a flag or a log line where that is the source)."""

    def __init__(self, field: str, detail: str, subject: str | None = None):
        super().__init__(f"{subject or field} {detail}")
        self.field, self.detail = field, detail


@dataclass(frozen=True)
class Sampling:
    """How every chunk is sampled, the same for every command (serve, demo, export,
    replay, sample, eval, bench): `steps` flow-matching Euler steps from noise,
    `warm_start` of them skipped by starting a chunk from its warped prior (not after a
    prompt switch or reset), and classifier-free `guidance` on the prompt (1: none; > 1
    evaluates every step with and without the prompt, about 1.3x the DiT's time), and
    `anchor`: the share of a warm-started chunk's result taken from its warped prior where
    it covers the view, on chunks whose camera pans (0: the network's alone;
    `model.generate.anchor_to_prior`), and `rewrite`: a closed-vocabulary model's prompts
    reworded in its caption grammar before they are encoded (`model.world.grammar_prompt`;
    models with a real text encoder, Wan's, read them as typed).

    Its defaults are the shipped model's (its model card has the eval behind them): one
    step from the warped prior, noised to t = 0.5 (6 steps, 5 skipped), follows the camera
    and costs what any one-step start costs. v2 made with 4/3 (t = 0.63) let a held pan
    slow to 0.9 px/frame of 4 in its second second; with 6/5 it holds 2.0-2.4. Less noise than
    that leaves a colour switch too little room to redraw the object. A chunk from noise
    (the first, and after a prompt switch) takes all 6 steps. Guidance is off by default:
    on v1's eval it showed the prompt's biome more often (80% -> 90% at 2) for a little
    camera accuracy (pan direction 95% -> 92%), but in the browser test at 4 px/frame pans
    the picture nearly stopped following the camera.
    """

    steps: int = 6
    warm_start: int = 5
    guidance: float = 1.0
    anchor: float = 0.5
    rewrite: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SamplingError("steps", f"must be an integer >= 1 (got {self.steps!r})")
        if (isinstance(self.warm_start, bool) or not isinstance(self.warm_start, int)
                or not 0 <= self.warm_start < self.steps):
            raise SamplingError("warm_start", f"must be an integer in [0, steps) (got {self.warm_start!r} "
                                f"with {self.steps} steps)")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) or not (
                math.isfinite(self.guidance) and 1.0 <= self.guidance <= 20.0):
            raise SamplingError("guidance", f"must be a number in [1, 20] (got {self.guidance!r})")
        if isinstance(self.anchor, bool) or not isinstance(self.anchor, (int, float)) or not (
                math.isfinite(self.anchor) and 0.0 <= self.anchor <= 1.0):
            raise SamplingError("anchor", f"must be a number in [0, 1] (got {self.anchor!r})")
        if not isinstance(self.rewrite, bool):
            raise SamplingError("rewrite", f"must be true or false (got {self.rewrite!r})")

    def generator(self, model: LiveReel, seed: int = 0, memory: bool = True) -> Generator:
        """A Generator for `model` under these settings; a model family whose recipe fixes
        the steps (Wan) takes only the guidance from them (`model.generator`)."""
        return model.generator(self, seed=seed, memory=memory)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "warm_start": self.warm_start, "guidance": float(self.guidance),
                "anchor": float(self.anchor), "rewrite": self.rewrite}


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """--steps, --warm-start, --guidance, --anchor and --rewrite, as every command takes them."""
    d = Sampling()
    parser.add_argument("--steps", type=int, default=None,
                        help=f"denoising steps per chunk from noise (default {d.steps})")
    parser.add_argument("--warm-start", type=int, default=None,
                        help="denoising steps skipped by starting a chunk from the warped previous frame "
                             "(default: steps - 1, one step from it; 0: every step from noise)")
    parser.add_argument("--guidance", type=float, default=None,
                        help=f"classifier-free guidance on the prompt, in [1, 20] (default {d.guidance:g}: "
                             "none; more follows the prompt more and the camera less, ~1.3x the time)")
    parser.add_argument("--anchor", type=float, default=None,
                        help=f"share of a chunk started from the warped previous frame that keeps that frame "
                             f"where it covers the view, while the camera pans, in [0, 1] (default {d.anchor:g}; "
                             "0: the network's picture alone; more follows the camera more exactly and redraws "
                             "less)")
    parser.add_argument("--rewrite", action=argparse.BooleanOptionalAction, default=None,
                        help="reword prompts in the caption grammar the model was trained on before encoding "
                             "them, keeping the words it knows (default: on; models with an open vocabulary, "
                             "Wan's, always read them as typed)")


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    """The flags of `add_sampling_arguments` over the defaults; --steps alone keeps one
    step from the warped prior. Raises SamplingError naming the bad flag."""
    d = Sampling()
    steps = d.steps if args.steps is None else args.steps
    warm = max(0, steps - 1) if args.warm_start is None else args.warm_start
    guidance = d.guidance if args.guidance is None else args.guidance
    anchor = d.anchor if getattr(args, "anchor", None) is None else args.anchor
    rewrite = d.rewrite if getattr(args, "rewrite", None) is None else args.rewrite
    try:
        return Sampling(steps, warm, guidance, anchor, rewrite)
    except SamplingError as e:
        raise SamplingError(e.field, e.detail, "--" + e.field.replace("_", "-")) from None
