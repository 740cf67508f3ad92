"""The sampling settings every command shares, and their flags."""

import argparse

import pytest

from model.sampling import Sampling, add_sampling_arguments, sampling_from_args


def parse(*argv: str) -> Sampling:
    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    return sampling_from_args(parser.parse_args(list(argv)))


def test_flags_over_the_defaults():
    assert parse() == Sampling() == Sampling(steps=6, warm_start=5, guidance=1.0, anchor=0.5)
    assert parse("--steps", "8") == Sampling(8, 7, 1.0)  # still one step from the warped prior
    assert parse("--steps", "2", "--warm-start", "0", "--guidance", "2.5") == Sampling(2, 0, 2.5)
    assert parse("--anchor", "0") == Sampling(anchor=0.0)
    assert parse("--no-rewrite") == Sampling(rewrite=False) != Sampling()
    assert parse("--rewrite") == Sampling()


@pytest.mark.parametrize("argv, message", [
    (("--steps", "0"), "--steps must be an integer >= 1"),
    (("--warm-start", "6"), r"--warm-start must be an integer in \[0, steps\) \(got 6 with 6 steps\)"),
    (("--warm-start", "-1"), "--warm-start must be"),
    (("--guidance", "0.5"), r"--guidance must be a number in \[1, 20\]"),
    (("--guidance", "nan"), "--guidance must be a number"),
    (("--guidance", "inf"), "--guidance must be a number"),
    (("--anchor", "1.5"), r"--anchor must be a number in \[0, 1\]"),
    (("--anchor", "nan"), "--anchor must be a number"),
])
def test_bad_flags_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(*argv)


def test_settings_reach_the_generator(debug_model):
    gen = Sampling(steps=3, warm_start=1, guidance=1.5).generator(debug_model, seed=7)
    assert (len(gen.sigmas) - 1, gen.warm_start, gen.guidance, gen.seed, gen.cfg_batch) == (3, 1, 1.5, 7, 2)
    assert Sampling(guidance=1.0).generator(debug_model).cfg_batch == 1
    assert Sampling().to_dict() == {"steps": 6, "warm_start": 5, "guidance": 1.0, "anchor": 0.5, "rewrite": True}
    assert Sampling(anchor=0.25).generator(debug_model).anchor == 0.25
    assert Sampling().generator(debug_model).rewrite and not Sampling(rewrite=False).generator(debug_model).rewrite
    with pytest.raises(ValueError, match="rewrite must be true or false"):
        Sampling(rewrite="yes")


def test_commands_check_their_flags_before_torch_is_loaded():
    """The sampling flags are torch-free (and so is `import model`): a bad flag of serve,
    export or replay is refused without paying for torch."""
    import subprocess
    import sys

    code = ("import sys, model, model.sampling, streamer.server, streamer.export, streamer.replay; "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
