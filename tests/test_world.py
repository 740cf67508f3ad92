"""The procedural world: determinism, captions and their parser, camera and streams."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import world
from model.world import Scene


def test_vocabulary_sizes():
    assert len(world.BIOMES) >= 6 and len(world.TIMES) >= 3 and len(world.WEATHERS) >= 3
    assert len(world.SHAPES) >= 4 and len(world.COLOURS) >= 6 and len(world.MOTIONS) >= 3
    assert set(world.ATTRIBUTES) == set(world.VOCAB)


def test_scene_rejects_unknown_values():
    with pytest.raises(ValueError):
        Scene("moon", "day", "clear", "ball", "red", "bouncing")


# ------------------------------------------------------------------ captions


def _all_scenes():
    for values in itertools.product(*(world.VOCAB[a] for a in world.ATTRIBUTES)):
        yield Scene(*values)


def test_caption_roundtrip_every_scene_every_template():
    rng = np.random.default_rng(0)
    n = 0
    for scene in _all_scenes():
        for t in range(len(world.CAPTION_TEMPLATES)):
            text = world.caption(scene, rng, template=t)
            assert world.parse_prompt(text) == scene.attributes(), text
            n += 1
    assert n == 3888 * len(world.CAPTION_TEMPLATES)


_SLOT_TABLES = {
    "colour": ("colour", world.COLOUR_WORDS),
    "shape": ("shape", world.SHAPE_WORDS),
    "motion_ing": ("motion", world.MOTION_ING),
    "motion_3s": ("motion", world.MOTION_3S),
    "place": ("biome", world.BIOME_PLACE),
    "biome_adj": ("biome", world.BIOME_ADJ),
    "time_phrase": ("time", world.TIME_PHRASE),
    "time_noun": ("time", world.TIME_NOUN),
    "weather_phrase": ("weather", world.WEATHER_PHRASE),
    "weather_clause": ("weather", world.WEATHER_CLAUSE),
}


def test_every_phrase_in_every_template_roundtrips():
    """Each word of the grammar, in every template and next to every neighbour value."""
    for t in world.CAPTION_TEMPLATES:
        for slot, (attr, table) in _SLOT_TABLES.items():
            if "{" + slot + "}" not in t:
                continue
            for value, phrases in table.items():
                for phrase in phrases:
                    for other in world.VOCAB:  # vary the neighbours too
                        for k in range(len(world.VOCAB[other])):
                            base = {a: world.VOCAB[a][0] for a in world.ATTRIBUTES}
                            base[other] = world.VOCAB[other][k]
                            base[attr] = value
                            scene = Scene(**base)
                            slots = {s: tab[getattr(scene, a)][0] for s, (a, tab) in _SLOT_TABLES.items()}
                            slots[slot] = phrase
                            slots["a"] = "an" if slots["colour"][0] in "aeiou" else "a"
                            text = t.format(**slots)
                            assert world.parse_prompt(text) == scene.attributes(), text


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_caption_roundtrip_random(seed):
    rng = np.random.default_rng(seed)
    scene = world.sample_scene(rng)
    text = world.caption(scene, rng)
    assert world.parse_prompt(text) == scene.attributes()


def test_parse_partial_and_paraphrases():
    assert world.parse_prompt("snowy night, a crimson ball bounces") == {
        "biome": "snowfield", "time": "night", "shape": "ball", "colour": "red", "motion": "bouncing"}
    assert world.parse_prompt("a red ball bouncing over snow at night") == {
        "biome": "snowfield", "time": "night", "shape": "ball", "colour": "red", "motion": "bouncing"}
    assert world.parse_prompt("A scarlet SPHERE!") == {"shape": "ball", "colour": "red"}
    assert world.parse_prompt("nighttime city while it snows") == {
        "biome": "city", "time": "night", "weather": "snow"}
    assert world.parse_prompt("a box in the woods at golden hour") == {
        "biome": "forest", "time": "sunset", "shape": "cube"}
    assert world.parse_prompt("a banana on the moon") == {}
    assert world.parse_prompt("") == {}


# ------------------------------------------------------------------ rendering


def test_render_clip_is_deterministic():
    a = world.render_clip(3, n_frames=12, size=64)
    b = world.render_clip(3, n_frames=12, size=64)
    c = world.render_clip(4, n_frames=12, size=64)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert np.array_equal(a.camera, b.camera) and a.segments == b.segments
    assert a.frames.tobytes() != c.frames.tobytes()


def test_clip_fields():
    clip = world.render_clip(11, n_frames=32, size=64, switch=True)
    assert clip.frames.shape == (32, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.camera.shape == (32, 3) and clip.camera.dtype == np.float32
    assert clip.velocity.shape == (32, 3) and clip.velocity.dtype == np.float32
    assert np.allclose(clip.velocity[1:], np.diff(clip.camera, axis=0), atol=1e-3)
    assert len(clip.scenes) == 32
    assert len(clip.switch_frames) == 1
    sf = clip.switch_frames[0]
    assert clip.scenes[sf - 1] != clip.scenes[sf] and clip.scenes[sf] == clip.scenes[-1]
    assert [s for s, _ in clip.segments] == [0, sf]
    assert world.parse_prompt(clip.prompt_at(sf - 1)) == clip.scenes[0].attributes()
    assert world.parse_prompt(clip.prompt_at(sf)) == clip.scenes[sf].attributes()
    still = world.render_clip(11, n_frames=8, size=64, switch=False, camera="still")
    assert not still.switch_frames and np.all(still.velocity == 0)


def test_switch_share_and_camera_programs():
    clips = [world.render_clip(s, n_frames=4, size=32) for s in range(200)]
    share = np.mean([bool(c.switch_frames) for c in clips])
    assert 0.2 < share < 0.4
    rng = np.random.default_rng(0)
    cmds = np.concatenate([world.random_camera_program(rng, 64, 128) for _ in range(200)])
    speed = np.linalg.norm(cmds[:, :2], axis=1)
    assert speed.max() <= 6.0 + 1e-9 and np.mean(speed[speed > 0] <= 4) > 0.6
    assert np.abs(cmds[:, 2]).max() <= 0.03 + 1e-9
    assert (speed == 0).mean() > 0.1 and (cmds[:, 2] != 0).mean() > 0.05


def test_background_is_a_function_of_world_coordinates():
    cams = np.array([[300.0, 200.0, 0.0], [308.0, 195.0, 0.0]])
    for biome in world.BIOMES:
        a, b = world.render_background(biome, cams).numpy()
        # camera moved by (+8, -5): what was at view (x, y) is now at (x - 8, y + 5)
        assert np.allclose(a[:, :-5, 8:], b[:, 5:, :-8], atol=1e-5), biome
        assert a.std() > 0.03, f"{biome} is too flat to measure camera motion"
    # one tile period later the world repeats exactly
    far = cams + [world.TILE, 0, 0]
    assert np.allclose(world.render_background("city", far), world.render_background("city", cams), atol=1e-4)


def test_night_keeps_texture_and_tints():
    base = dict(biome="grassland", weather="clear", shape="ball", colour="red", motion="drifting")
    day = world.WorldStream(Scene(time="day", **base), seed=1).render(1)[0].astype(float)
    night = world.WorldStream(Scene(time="night", **base), seed=1).render(1)[0].astype(float)
    assert night.mean() < 0.6 * day.mean()
    assert night[..., 2].mean() > night[..., 0].mean()  # blue tint
    assert night.std(axis=(0, 1)).mean() > 8  # texture still visible


def test_object_size_scales_with_view():
    scene = Scene("ocean", "day", "clear", "ball", "yellow", "orbiting")
    for size in (64, 128):
        f = world.WorldStream(scene, seed=2, size=size).render(1)[0].astype(int)
        yellow = (f[..., 0] > 180) & (f[..., 1] > 150) & (f[..., 2] < 90)
        diameter = 2 * np.sqrt(yellow.sum() / np.pi)
        expected = 2 * 11.0 * world.OBJECT_SCALE / world.REF_SIZE * size  # the ball's radius is 11 px x scale
        assert 0.6 * expected < diameter < 1.2 * expected, (size, diameter)


def test_world_stream_continues_and_returns():
    scene = Scene("desert", "sunset", "rain", "star", "blue", "bouncing")
    one = world.WorldStream(scene, seed=5, size=64)
    two = world.WorldStream(scene, seed=5, size=64)
    whole = one.render(8, (2.0, -1.0, 0.0))
    parts = np.concatenate([two.render(3, (2.0, -1.0, 0.0)), two.render(5, (2.0, -1.0, 0.0))])
    assert np.array_equal(whole, parts)
    start = two.camera.copy()
    two.render(10, (4.0, 0.0, 0.0))
    two.render(10, (-4.0, 0.0, 0.0))
    assert np.allclose(two.camera, start)
    two.render(5, (0.0, 0.0, 0.03))
    assert two.camera[2] == pytest.approx(start[2] + 0.15)
    two.set_scene(Scene("ocean", "day", "clear", "ball", "red", "drifting"))
    assert two.render(2).shape == (2, 64, 64, 3) and two.frame_index == 35


def test_zoom_is_clamped():
    stream = world.WorldStream(world.sample_scene(np.random.default_rng(0)), size=32)
    stream.render(200, (0.0, 0.0, 0.03))
    assert stream.camera[2] == pytest.approx(world.ZOOM_RANGE[1])


def test_pan_to_px_per_frame():
    assert world.pan_to_px_per_frame(0.5, 128, 16) == pytest.approx(4.0)
    assert world.pan_to_px_per_frame(-1.0, 64, 16) == pytest.approx(-4.0)


def test_object_track_says_where_the_object_is():
    """The clip's object track points at the object: at its centre the picture has the
    object's colour, two radii away it does not (clear days, where nothing veils it)."""
    from model.world import OBJECT_RGB, render_clip

    checked = 0
    for seed in range(200):
        clip = render_clip(seed, n_frames=4, size=128, switch=False)
        scene = clip.scenes[0]
        if scene.time != "day" or scene.weather != "clear" or scene.shape == "star":
            continue
        for frame, (x, y, r) in zip(clip.frames, clip.objects):
            want = np.array(OBJECT_RGB[scene.colour]) * 255
            at = frame[int(y), int(x)].astype(float)
            ox, oy = min(max(x + 2.2 * r, 0), 127), y  # beside the object
            away = frame[int(oy), int(ox)].astype(float)
            assert np.abs(at - want).sum() < np.abs(away - want).sum(), (seed, scene, at, away, want)
        checked += 1
        if checked == 5:
            break
    assert checked == 5


@pytest.mark.parametrize("partial", [False, True])
def test_free_captions_parse_back_to_their_scene(partial):
    """Training captions in free wording name only the scene's values (all of them
    unless partial), so the words users type are trained on what they mean."""
    rng = np.random.default_rng(5)
    named = set()
    for _ in range(3000):
        scene = world.sample_scene(rng)
        text = world.free_caption(scene, rng, partial=partial)
        got = world.parse_prompt(text)
        assert all(scene.attributes()[a] == v for a, v in got.items()), text
        if not partial:
            assert set(got) == set(world.ATTRIBUTES), text
        named.add(len(got))
    assert (named == {6}) != partial  # partial captions leave some attributes out


def test_explain_prompt_names_the_understood_and_the_ignored_words():
    got = world.explain_prompt("A sunny beach with palm trees at night, by day")
    known = [(e["text"], e["attribute"], e["value"], e["used"]) for e in got if e["attribute"]]
    assert known == [("sunny", "weather", "clear", True), ("trees", "biome", "forest", True),
                     ("at night", "time", "night", True), ("by day", "time", "day", False)]
    ignored = [e["text"] for e in got if e["attribute"] is None and not e["stop"]]
    assert ignored == ["beach", "palm"]
    assert [e["text"] for e in got if e.get("stop")] == ["a", "with"]
    # parse_prompt is what explain_prompt uses
    assert world.parse_prompt("A sunny beach with palm trees at night, by day") == \
        {"biome": "forest", "time": "night", "weather": "clear"}


def test_vocabulary_lists_every_value_and_words_that_parse_to_it():
    vocab = world.vocabulary()
    assert {a: list(v) for a, v in vocab.items()} == {a: list(world.VOCAB[a]) for a in world.ATTRIBUTES}
    for attr, values in vocab.items():
        for value, phrases in values.items():
            assert phrases[0] == value or (attr, value) == ("weather", "snow")  # bare "snow": the biome
            for p in phrases:
                assert world.parse_prompt(p) == {attr: value}, p
    assert "crimson" in vocab["colour"]["red"] and "rain" in vocab["weather"]["rain"]


def test_a_fixed_object_start_puts_each_motion_in_one_place_at_the_first_frame():
    starts: dict[str, dict[str, list]] = {"random": {}, "fixed": {}}
    for how in starts:
        for seed in range(40):
            clip = world.render_clip(seed, n_frames=2, size=64, camera="still", object_start=how)
            starts[how].setdefault(clip.scenes[0].motion, []).append(clip.objects[0, :2])
    for motion, xy in starts["fixed"].items():
        spread = np.ptp(np.array(xy), axis=0).max()
        assert spread < 0.1 * 64 + 1e-6, (motion, spread)  # one place (the motion's sizes still vary a little)
    assert max(np.ptp(np.array(xy), axis=0).max() for xy in starts["random"].values()) > 0.2 * 64
    with pytest.raises(ValueError, match="object_start"):
        world.render_clip(0, n_frames=2, size=64, object_start="centre")


def test_grammar_prompt_rewords_what_users_type_in_the_caption_grammar():
    """A prompt reworded keeps every attribute the parser reads in it, in template 0's
    order and each value's first word; rewording twice changes nothing; a prompt naming
    nothing the parser knows stays as typed (the model reads it as it is)."""
    assert world.grammar_prompt("it is raining at night in the dunes, and a white triangle floats around") == \
        "a white triangle drifting over the desert at night in the rain"
    assert world.grammar_prompt("golden hour on the tundra") == "snow at sunset"
    default = "a red ball bouncing over a meadow by day under clear skies"
    assert world.grammar_prompt(default) == default
    for text in ("hello world", "", "   "):
        assert world.grammar_prompt(text) == text
    rng = np.random.default_rng(2)
    for _ in range(2000):
        scene = world.sample_scene(rng)
        text = world.free_caption(scene, rng, partial=bool(rng.random() < 0.3))
        got = world.grammar_prompt(text)
        assert world.parse_prompt(got) == world.parse_prompt(text), (text, got)
        assert world.grammar_prompt(got) == got
        if len(world.parse_prompt(text)) == len(world.ATTRIBUTES):  # all named: template 0 itself
            first = {a: v[0] for a, v in (("colour", world.COLOUR_WORDS[scene.colour]),
                                          ("shape", world.SHAPE_WORDS[scene.shape]),
                                          ("motion_ing", world.MOTION_ING[scene.motion]),
                                          ("place", world.BIOME_PLACE[scene.biome]),
                                          ("time_phrase", world.TIME_PHRASE[scene.time]),
                                          ("weather_phrase", world.WEATHER_PHRASE[scene.weather]))}
            first["a"] = "an" if first["colour"][0] in "aeiou" else "a"
            assert got == world.CAPTION_TEMPLATES[0].format(**first)
