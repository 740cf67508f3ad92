"""The procedural world the default model trains on and is evaluated on.

A 2-D world larger than the view: one biome texture per scene (a function of world
coordinates, tileable with period `TILE` texels, the same for every clip of a world
seed), a time-of-day tint, a weather overlay in view coordinates, and one object in
view coordinates (a followed character) with a colour, a shape and a motion. A camera
pans and zooms over the world. Clips render deterministically from a seed, with
captions from a small grammar, per-frame scenes and the true camera path.

Units. The camera is `[x, y, zoom_log2]`: x right, y down, in world pixels, where at
zoom 0 one world pixel is one view pixel; zoom z > 0 zooms in (the view covers 2^-z as
much world). Texture features are drawn in texels of a 128-px reference view, so the
world looks the same at any view size (one texel = size/128 world px).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------

BIOMES = ("grassland", "desert", "snowfield", "ocean", "city", "forest")
TIMES = ("day", "sunset", "night")
WEATHERS = ("clear", "rain", "snow")
SHAPES = ("ball", "cube", "triangle", "star")
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
MOTIONS = ("bouncing", "drifting", "orbiting")
ATTRIBUTES = ("biome", "time", "weather", "shape", "colour", "motion")
VOCAB: dict[str, tuple[str, ...]] = {
    "biome": BIOMES,
    "time": TIMES,
    "weather": WEATHERS,
    "shape": SHAPES,
    "colour": COLOURS,
    "motion": MOTIONS,
}

WORLD_SEED = 0
REF_SIZE = 128  # view size at which one texel is one world pixel
TILE = 512  # texture period in texels (4 reference view widths)
ZOOM_RANGE = (-1.0, 1.5)  # log2 zoom limits
_MIP_LEVELS = 4


@dataclass(frozen=True)
class Scene:
    biome: str
    time: str
    weather: str
    shape: str
    colour: str
    motion: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            if getattr(self, name) not in VOCAB[name]:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; one of {VOCAB[name]}")

    def attributes(self) -> dict[str, str]:
        return asdict(self)


def sample_scene(rng: np.random.Generator) -> Scene:
    return Scene(**{a: VOCAB[a][int(rng.integers(len(VOCAB[a])))] for a in ATTRIBUTES})


def change_scene(scene: Scene, rng: np.random.Generator, n_changes: int) -> Scene:
    """`scene` with `n_changes` attributes set to a different value each."""
    names = rng.choice(len(ATTRIBUTES), size=n_changes, replace=False)
    changes = {}
    for i in sorted(names):
        a = ATTRIBUTES[i]
        others = [v for v in VOCAB[a] if v != getattr(scene, a)]
        changes[a] = others[int(rng.integers(len(others)))]
    return replace(scene, **changes)


# ---------------------------------------------------------------------------------
# Captions: a small grammar, and the parser that inverts it
# ---------------------------------------------------------------------------------

# Words of each role per value. Every phrase here must parse back to its value alone.
COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "cobalt"),
    "yellow": ("yellow", "lemon", "canary"),
    "purple": ("purple", "violet", "lilac"),
    "white": ("white", "ivory", "pearl"),
}
SHAPE_WORDS = {
    "ball": ("ball", "sphere", "orb"),
    "cube": ("cube", "box", "block"),
    "triangle": ("triangle", "pyramid", "wedge"),
    "star": ("star",),
}
MOTION_ING = {
    "bouncing": ("bouncing", "hopping"),
    "drifting": ("drifting", "floating", "gliding"),
    "orbiting": ("orbiting", "circling"),
}
MOTION_3S = {
    "bouncing": ("bounces", "hops"),
    "drifting": ("drifts", "floats", "glides"),
    "orbiting": ("orbits", "circles"),
}
BIOME_PLACE = {
    "grassland": ("a meadow", "the grassland", "grass", "open fields"),
    "desert": ("the desert", "sand dunes", "sand"),
    "snowfield": ("snow", "a snowfield", "the tundra"),
    "ocean": ("the ocean", "the sea", "open water"),
    "city": ("the city", "city streets", "a town"),
    "forest": ("the forest", "the woods", "treetops"),
}
BIOME_ADJ = {
    "grassland": ("grassy", "meadow", "prairie"),
    "desert": ("desert", "sandy"),
    "snowfield": ("snowy", "tundra"),
    "ocean": ("ocean", "sea"),
    "city": ("city", "urban"),
    "forest": ("forest", "woodland"),
}
TIME_PHRASE = {
    "day": ("by day", "during the day", "in daylight", "at midday"),
    "sunset": ("at sunset", "at dusk", "in the evening", "at golden hour"),
    "night": ("at night", "at nighttime", "at midnight", "after dark"),
}
TIME_NOUN = {
    "day": ("day", "daytime", "midday"),
    "sunset": ("sunset", "dusk", "evening"),
    "night": ("night", "nighttime", "midnight"),
}
WEATHER_PHRASE = {
    "clear": ("under clear skies", "in clear weather", "under a clear sky"),
    "rain": ("in the rain", "in heavy rain", "while it rains", "in a downpour"),
    "snow": ("in falling snow", "while it snows", "as snow falls", "in a snowfall"),
}
WEATHER_CLAUSE = {
    "clear": ("clear skies", "the sky is clear", "clear weather"),
    "rain": ("rain falling", "raining", "heavy rain"),
    "snow": ("snow falling", "snowing", "snowflakes in the air"),
}

# Templates over the slots above; {a} is the article agreeing with the colour word.
CAPTION_TEMPLATES = (
    "{a} {colour} {shape} {motion_ing} over {place} {time_phrase} {weather_phrase}",
    "{biome_adj} {time_noun}, {a} {colour} {shape} {motion_3s} {weather_phrase}",
    "{time_phrase}, {a} {colour} {shape} {motion_ing} across {place}, {weather_clause}",
    "{weather_clause} over {place} {time_phrase}: {a} {colour} {shape}, {motion_ing}",
    "{biome_adj} {time_noun} {weather_phrase}, with {a} {colour} {shape} {motion_ing}",
    "{colour} {shape} {motion_ing} above {place}, {weather_clause}, {time_phrase}",
)

# Extra synonyms the parser knows beyond the grammar's words (users type these).
_EXTRA_SYNONYMS = {
    "biome": {
        "grassland": ("grasslands", "meadows", "field", "fields", "grassy field", "lawn"),
        "desert": ("dunes", "dune", "sandy desert"),
        "snowfield": ("snowfields", "snow field", "snowy plain", "ice field", "glacier"),
        "ocean": ("waves", "water", "seas", "open sea"),
        "city": ("town", "streets", "street", "downtown", "rooftops"),
        "forest": ("forests", "woods", "woodlands", "trees", "wooded", "jungle"),
    },
    "time": {
        "day": ("daylight", "noon", "morning", "afternoon", "the day"),
        "sunset": ("golden hour", "twilight", "sundown"),
        "night": ("after dark", "moonlight", "moonlit"),
    },
    "weather": {
        "clear": ("clear", "clear sky", "clear skies", "sunny", "fair weather"),
        "rain": ("rain", "rainy", "rains", "rainfall", "downpour", "drizzle", "showers", "storm"),
        "snow": ("snows", "snowfall", "snowflakes", "snowstorm", "falling snow",
                 "snow falls", "snow falling", "blizzard"),
    },
    "shape": {
        "ball": ("balls", "spheres", "orbs", "globe"),
        "cube": ("cubes", "boxes", "square", "crate"),
        "triangle": ("triangles", "triangular", "pyramids"),
        "star": ("stars",),
    },
    "colour": {
        "red": ("ruby",),
        "green": ("jade",),
        "blue": ("navy", "sapphire"),
        "yellow": ("gold",),
        "purple": ("mauve", "plum", "magenta"),
        "white": ("snowwhite",),
    },
    "motion": {
        "bouncing": ("bounce", "bouncy", "jumping", "jumps", "hops"),
        "drifting": ("drift", "floats", "wandering", "wanders"),
        "orbiting": ("orbit", "revolving", "revolves"),
    },
}

_STOP_WORDS = frozenset(
    "a an the by during in at over across above with under while it as is of and on "
    "open air".split()
)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _build_phrase_table() -> dict[tuple[str, ...], tuple[str, str]]:
    """Token tuple -> (attribute, value). Grammar phrases keep their content words only."""
    table: dict[tuple[str, ...], tuple[str, str]] = {}

    def add(attr: str, value: str, phrase: str) -> None:
        toks = tuple(_tokens(phrase))
        content = tuple(t for t in toks if t not in _STOP_WORDS) or toks
        for key in {toks, content}:
            old = table.setdefault(key, (attr, value))
            if old != (attr, value):
                raise ValueError(f"phrase {key} maps to both {old} and {(attr, value)}")

    for attr, tables in (
        ("colour", (COLOUR_WORDS,)),
        ("shape", (SHAPE_WORDS,)),
        ("motion", (MOTION_ING, MOTION_3S)),
        ("biome", (BIOME_ADJ,)),
        ("time", (TIME_NOUN,)),
    ):
        for t in tables:
            for value, words in t.items():
                for w in words:
                    add(attr, value, w)
    # multi-word phrases: map their content words (stop words dropped)
    for attr, t in (
        ("biome", BIOME_PLACE),
        ("time", TIME_PHRASE),
        ("weather", WEATHER_PHRASE),
        ("weather", WEATHER_CLAUSE),
    ):
        for value, phrases in t.items():
            for p in phrases:
                add(attr, value, p)
    for attr, t in _EXTRA_SYNONYMS.items():
        for value, words in t.items():
            for w in words:
                add(attr, value, w)
    for attr in ATTRIBUTES:  # the value names themselves; bare "snow" is the biome
        for value in VOCAB[attr]:
            if (attr, value) != ("weather", "snow"):
                add(attr, value, value)
    return table


_PHRASES = _build_phrase_table()
_MAX_PHRASE = max(len(k) for k in _PHRASES)


def explain_prompt(text: str) -> list[dict]:
    """What the parser makes of each word of `text`, in order: one entry per phrase it
    knows ({"text", "attribute", "value", "used"}; `used` False for a second value of an
    attribute, which the first overrides) and per other word ({"text", "attribute": None};
    "stop": True for the small words of the grammar, which mean nothing alone)."""
    toks = _tokens(text)
    out: list[dict] = []
    seen: set[str] = set()
    i = 0
    while i < len(toks):
        for n in range(min(_MAX_PHRASE, len(toks) - i), 0, -1):
            hit = _PHRASES.get(tuple(toks[i : i + n]))
            if hit is not None:
                out.append({"text": " ".join(toks[i : i + n]), "attribute": hit[0], "value": hit[1],
                            "used": hit[0] not in seen})
                seen.add(hit[0])
                i += n
                break
        else:
            out.append({"text": toks[i], "attribute": None, "stop": toks[i] in _STOP_WORDS})
            i += 1
    return out


def parse_prompt(text: str) -> dict[str, str]:
    """The attributes a prompt names, as {attribute: value} (in ATTRIBUTES order).

    Longest phrase first, left to right; unknown words are ignored; when a prompt
    names two values of one attribute the first wins.
    """
    found = {e["attribute"]: e["value"] for e in explain_prompt(text) if e["attribute"] and e["used"]}
    return {a: found[a] for a in ATTRIBUTES if a in found}


def vocabulary() -> dict[str, dict[str, list[str]]]:
    """Every word and phrase the parser knows: {attribute: {value: [phrases]}}, each of
    which parses to that value alone, the value's own name first where it does (bare
    "snow" is the biome: the snow weather starts "falling snow"), for a page or a --help
    that lists what a prompt can say."""
    out: dict[str, dict[str, list[str]]] = {
        a: {v: [v] if _PHRASES.get((v,)) == (a, v) else [] for v in VOCAB[a]} for a in ATTRIBUTES
    }
    for key, (attr, value) in _PHRASES.items():
        phrase = " ".join(key)
        if phrase not in out[attr][value] and not set(key) & _STOP_WORDS:  # "in the rain": "rain"
            out[attr][value].append(phrase)
    return out


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def caption(scene: Scene, rng: np.random.Generator, template: int | None = None) -> str:
    """A caption naming every attribute of `scene`, from a random template and words."""
    t = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES))) if template is None else template]
    colour = _pick(rng, COLOUR_WORDS[scene.colour])
    slots = {
        "colour": colour,
        "a": "an" if colour[0] in "aeiou" else "a",
        "shape": _pick(rng, SHAPE_WORDS[scene.shape]),
        "motion_ing": _pick(rng, MOTION_ING[scene.motion]),
        "motion_3s": _pick(rng, MOTION_3S[scene.motion]),
        "place": _pick(rng, BIOME_PLACE[scene.biome]),
        "biome_adj": _pick(rng, BIOME_ADJ[scene.biome]),
        "time_phrase": _pick(rng, TIME_PHRASE[scene.time]),
        "time_noun": _pick(rng, TIME_NOUN[scene.time]),
        "weather_phrase": _pick(rng, WEATHER_PHRASE[scene.weather]),
        "weather_clause": _pick(rng, WEATHER_CLAUSE[scene.weather]),
    }
    text = t.format(**slots)
    return text[0].upper() + text[1:] if rng.random() < 0.3 else text


# Free wording for training captions: every word the parser knows, other sentence orders,
# and now and then a prompt that names only some attributes, as users type them. The eval's
# held-out paraphrases (examples/paraphrase_prompts.txt) use sentence forms not listed here.
_FREE_PLACE = {
    "grassland": ("fields", "a field", "a lawn", "meadows", "the prairie", "grasslands"),
    "desert": ("dunes", "a sandy desert", "the dunes"),
    "snowfield": ("a glacier", "an ice field", "a snowy plain", "snowfields"),
    "ocean": ("waves", "the water", "the open sea", "the seas"),
    "city": ("downtown", "the streets", "rooftops", "the town"),
    "forest": ("the woods", "trees", "a jungle", "woodlands"),
}
_FREE_TIME = {
    "day": ("in the morning", "at noon", "in the afternoon", "in daylight", "during the day"),
    "sunset": ("at twilight", "at sundown", "at golden hour", "at dusk"),
    "night": ("under moonlight", "on a moonlit night", "after dark", "at night"),
}
_FREE_WEATHER = {
    "clear": ("under sunny skies", "in fair weather", "under a clear sky"),
    "rain": ("in a drizzle", "in a storm", "in the showers", "in the rainfall", "in the rain"),
    "snow": ("in a blizzard", "in a snowstorm", "among snowflakes", "in falling snow"),
}
_FREE_SHAPE = {"ball": ("globe",), "cube": ("crate",), "triangle": (), "star": ()}
_FREE_MOTION = {"bouncing": ("jumping",), "drifting": ("wandering",), "orbiting": ("revolving",)}
_FREE_TEMPLATES = (
    "{place} {time}, {weather}; {a} {colour} {shape} {motion}",
    "{a} {colour} {shape} is {motion} over {place}, {time}, {weather}",
    "{weather} {time}: {place} and {a} {colour} {shape} {motion}",
    "show me {a} {colour} {shape} {motion} over {place} {time} {weather}",
    "{colour} {shape}, {motion}, {place}, {time}, {weather}",
)
_PARTIAL_TEMPLATES = (  # each leaves some attributes to the world
    "{a} {colour} {shape} over {place}",
    "{place} {time}",
    "{place} {weather}",
    "{a} {colour} {shape} {motion} {time}",
)


def free_caption(scene: Scene, rng: np.random.Generator, partial: bool = False) -> str:
    """A caption in free wording (any word the parser knows, other sentence orders);
    `partial`: one naming only some attributes (the rest are the world's choice)."""
    colour = _pick(rng, COLOUR_WORDS[scene.colour] + _EXTRA_SYNONYMS["colour"][scene.colour])
    slots = {
        "colour": colour,
        "a": "an" if colour[0] in "aeiou" else "a",
        "shape": _pick(rng, SHAPE_WORDS[scene.shape] + _FREE_SHAPE[scene.shape]),
        "motion": _pick(rng, MOTION_ING[scene.motion] + _FREE_MOTION[scene.motion]),
        "place": _pick(rng, BIOME_PLACE[scene.biome] + _FREE_PLACE[scene.biome]),
        "time": _pick(rng, TIME_PHRASE[scene.time] + _FREE_TIME[scene.time]),
        "weather": _pick(rng, WEATHER_PHRASE[scene.weather] + _FREE_WEATHER[scene.weather]),
    }
    text = _pick(rng, _PARTIAL_TEMPLATES if partial else _FREE_TEMPLATES).format(**slots)
    return text[0].upper() + text[1:] if rng.random() < 0.3 else text


def training_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The caption a training clip gets: the grammar's (60%), free wording (30%) or a
    partial prompt (10%)."""
    u = rng.random()
    return caption(scene, rng) if u < 0.6 else free_caption(scene, rng, partial=u >= 0.9)


def grammar_prompt(text: str) -> str:
    """`text` reworded in the caption grammar (template 0, each value's first word): the
    attributes it names, in the order and words the built-in text encoder saw most in
    training; the words the parser does not know are dropped (the encoder never learned
    them). A prompt that names nothing the parser knows is returned as it is. As the Wan
    family's prompt extension rewrites what users type into its captions' style, this
    puts a closed-vocabulary model's prompts into its own (`Sampling.rewrite`)."""
    found = parse_prompt(text)
    if not found:
        return text
    words: list[str] = []
    if "colour" in found:
        colour = COLOUR_WORDS[found["colour"]][0]
        words += ["an" if colour[0] in "aeiou" else "a", colour]
    if "shape" in found:
        words += ([] if words else ["a"]) + [SHAPE_WORDS[found["shape"]][0]]
    if "motion" in found:
        words.append(MOTION_ING[found["motion"]][0])
    if "biome" in found:
        words += (["over"] if words else []) + [BIOME_PLACE[found["biome"]][0]]
    if "time" in found:
        words.append(TIME_PHRASE[found["time"]][0])
    if "weather" in found:
        words.append(WEATHER_PHRASE[found["weather"]][0])
    return " ".join(words)


def scene_from_prompt(text: str, base: Scene) -> Scene:
    """`base` with the attributes that `text` names replaced."""
    return replace(base, **parse_prompt(text))


def vocabulary_text(synonyms: int = 2) -> str:
    """The vocabulary in one paragraph for people (--help, the demo): each attribute's
    values, with up to `synonyms` other words for each."""
    parts = []
    for attr, values in vocabulary().items():
        words = []
        for v, p in values.items():
            others = [w for w in p if w != v][:synonyms]
            words.append(f"{v} ({', '.join(others)})" if others else v)
        parts.append(f"{attr}: {', '.join(words)}")
    return ("The livereel models know the words of their world only: " + "; ".join(parts)
            + ". A prompt replaces the whole scene; what it leaves out, the model chooses. "
            "Other words are ignored.")


# ---------------------------------------------------------------------------------
# Textures: one tileable TILE x TILE RGB texture per biome, deterministic per world seed
# ---------------------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, n: int, cell: int) -> np.ndarray:
    """Tileable smooth value noise in [0, 1], (n, n), lattice spacing `cell` texels."""
    lat = n // cell
    grid = rng.random((lat, lat), dtype=np.float32)
    x = (np.arange(n, dtype=np.float32) + 0.5) / cell - 0.5
    i0 = np.floor(x).astype(np.int64)
    f = x - i0
    f = f * f * (3 - 2 * f)
    a, b = i0 % lat, (i0 + 1) % lat
    rows = grid[a] * (1 - f)[:, None] + grid[b] * f[:, None]  # (n, lat)
    return rows[:, a] * (1 - f)[None, :] + rows[:, b] * f[None, :]


def _fbm(rng: np.random.Generator, n: int, cells: tuple[int, ...]) -> np.ndarray:
    out = np.zeros((n, n), np.float32)
    total = 0.0
    for k, c in enumerate(cells):
        amp = 0.55**k
        out += amp * _value_noise(rng, n, c)
        total += amp
    out /= total
    lo, hi = np.percentile(out, [1, 99])
    return np.clip((out - lo) / (hi - lo), 0, 1)


def _stripes(n: int, kx: int, ky: int, warp: np.ndarray, amount: float) -> np.ndarray:
    """Tileable 0..1 stripes with integer wave numbers (kx, ky) per tile, phase-warped."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    phase = 2 * np.pi * (kx * x + ky * y) / n + amount * warp
    return 0.5 + 0.5 * np.sin(phase)


def _mix(img: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return img * (1 - a) + np.asarray(colour, np.float32) * a


def _stamp(img: np.ndarray, cx: float, cy: float, radius: float, colour, alpha: float,
           shade: float = 0.0, soft: float = 1.0) -> None:
    """Paint a soft disc on the torus, in place; `shade` lights it from the top-left."""
    n = img.shape[0]
    r = int(math.ceil(radius + 2))
    ys = np.arange(int(cy) - r, int(cy) + r + 1)
    xs = np.arange(int(cx) - r, int(cx) + r + 1)
    dy = (ys + 0.5 - cy)[:, None]
    dx = (xs + 0.5 - cx)[None, :]
    d = np.sqrt(dx * dx + dy * dy)
    a = np.clip((radius - d) / soft, 0, 1) * alpha
    col = np.asarray(colour, np.float32)[None, None, :]
    if shade:
        light = 1 + shade * np.clip(-(dx + dy) / (1.4 * radius), -1, 1)
        col = col * light[..., None]
    iy, ix = np.ix_(ys % n, xs % n)
    patch = img[iy, ix]
    img[iy, ix] = patch * (1 - a[..., None]) + col * a[..., None]


def _grain(rng: np.random.Generator, n: int, amount: float) -> np.ndarray:
    """Multiplicative fine grain (4-8 texel cells) around 1: crisp detail for matching."""
    return (1 + amount * (2 * _fbm(rng, n, (8, 4)) - 1))[..., None]


def _grassland(rng: np.random.Generator, n: int) -> np.ndarray:
    base = _fbm(rng, n, (64, 32, 16))
    img = _mix(np.broadcast_to(np.float32([0.24, 0.46, 0.16]), (n, n, 3)).copy(),
               (0.46, 0.68, 0.26), base)
    for _ in range(30):  # dirt patches
        _stamp(img, *rng.random(2) * n, rng.uniform(6, 12), (0.47, 0.40, 0.24), 0.7, soft=2)
    for _ in range(1600):  # tufts
        c = (0.13, 0.31, 0.08) if rng.random() < 0.55 else (0.56, 0.78, 0.32)
        _stamp(img, *rng.random(2) * n, rng.uniform(2, 4.5), c, 0.85, soft=0.7)
    return img * _grain(rng, n, 0.12)


def _desert(rng: np.random.Generator, n: int) -> np.ndarray:
    warp = _fbm(rng, n, (128, 64))
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    phase = (18 * x + 8 * y) / n + 0.8 * warp  # dune crests: a sharp edge once a period
    dunes = phase - np.floor(phase)
    ripples = _stripes(n, 5, 40, warp, 2.0)
    tone = _fbm(rng, n, (64, 16))
    shade = 0.70 + 0.30 * dunes + 0.06 * ripples + 0.08 * tone
    img = np.float32([0.87, 0.71, 0.46]) * shade[..., None]
    for _ in range(140):  # rocks and pebbles
        _stamp(img, *rng.random(2) * n, rng.uniform(1.5, 5), (0.46, 0.35, 0.24), 0.95, shade=0.3, soft=0.7)
    return img * _grain(rng, n, 0.10)


def _snowfield(rng: np.random.Generator, n: int) -> np.ndarray:
    shadows = _fbm(rng, n, (64, 32, 16))
    warp = _fbm(rng, n, (128,))
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    phase = (6 * x + 16 * y) / n + 1.2 * warp  # wind-cut sastrugi, sharp on one side
    sastrugi = phase - np.floor(phase)
    img = np.broadcast_to(np.float32([0.80, 0.84, 0.93]), (n, n, 3)).copy()
    img = _mix(img, (0.56, 0.64, 0.84), np.clip((shadows - 0.45) * 2.2, 0, 1))
    img = img * (0.90 + 0.12 * sastrugi)[..., None]
    for _ in range(120):  # rocks poking through, and their blue shadows
        x0, y0, r = rng.random() * n, rng.random() * n, rng.uniform(1.5, 5)
        _stamp(img, x0 + 1.5, y0 + 1.5, r * 1.2, (0.50, 0.58, 0.80), 0.6, soft=1.0)
        _stamp(img, x0, y0, r, (0.36, 0.38, 0.44), 0.95, shade=0.3, soft=0.7)
    return img * _grain(rng, n, 0.08)


def _ocean(rng: np.random.Generator, n: int) -> np.ndarray:
    depth = _fbm(rng, n, (128, 64, 32))
    warp = _fbm(rng, n, (64, 32))
    img = _mix(np.broadcast_to(np.float32([0.04, 0.20, 0.42]), (n, n, 3)).copy(),
               (0.10, 0.38, 0.60), depth)
    breaks = _fbm(rng, n, (32, 16))
    waves = _stripes(n, 22, 9, warp, 7.0)
    crest = np.clip((waves - 0.8) * 10, 0, 1) * np.clip((breaks - 0.35) * 4, 0, 1)
    img = _mix(img, (0.02, 0.12, 0.30), np.clip((0.3 - waves) * 3, 0, 1) * 0.5)  # troughs
    img = _mix(img, (0.80, 0.90, 0.96), crest * 0.9)
    for _ in range(250):  # whitecaps
        _stamp(img, *rng.random(2) * n, rng.uniform(1, 2.5), (0.85, 0.93, 0.97), 0.8, soft=0.7)
    return img * _grain(rng, n, 0.18)


def _city(rng: np.random.Generator, n: int) -> np.ndarray:
    block, road = 64, 10
    img = np.broadcast_to(np.float32([0.27, 0.27, 0.29]), (n, n, 3)).copy()
    roofs = ((0.62, 0.62, 0.60), (0.46, 0.47, 0.50), (0.66, 0.36, 0.26), (0.30, 0.33, 0.38),
             (0.72, 0.68, 0.58), (0.52, 0.30, 0.22))
    for by in range(0, n, block):
        for bx in range(0, n, block):
            x0, y0, size = bx + road // 2, by + road // 2, block - road
            img[y0 - 2 : y0 + size + 2, x0 - 2 : x0 + size + 2] = (0.58, 0.58, 0.56)  # sidewalk
            if rng.random() < 0.15:  # park
                img[y0 : y0 + size, x0 : x0 + size] = (0.30, 0.52, 0.24)
                for _ in range(6):
                    _stamp(img, x0 + rng.uniform(6, size - 6), y0 + rng.uniform(6, size - 6),
                           rng.uniform(4, 7), (0.16, 0.36, 0.14), 1.0, shade=0.3)
                continue
            # split the block into 2-4 buildings
            xs = [x0, x0 + int(rng.integers(size // 3, 2 * size // 3)), x0 + size]
            for i in range(2):
                ys = [y0, y0 + int(rng.integers(size // 3, 2 * size // 3)), y0 + size]
                if rng.random() < 0.4:
                    ys = [y0, y0 + size]
                for j in range(len(ys) - 1):
                    c = np.float32(roofs[int(rng.integers(len(roofs)))]) * rng.uniform(0.9, 1.1)
                    a, b, c0, d = ys[j] + 1, ys[j + 1] - 1, xs[i] + 1, xs[i + 1] - 1
                    img[a:b, c0:d] = c * 0.7  # roof edge
                    img[a + 2 : b - 2, c0 + 2 : d - 2] = c
                    img[a + 2 : b - 2, c0 + 2 : c0 + 4] = np.minimum(c * 1.25, 1)  # lit edge
    # dashed centre lines on the roads
    dash = (np.arange(n) % 16) < 8
    for k in range(0, n, block):
        img[k : k + 2, dash] = (0.80, 0.78, 0.62)
        img[dash, k : k + 2] = (0.80, 0.78, 0.62)
    return np.roll(img, (-1, -1), axis=(0, 1)) * _grain(rng, n, 0.08)


def _forest(rng: np.random.Generator, n: int) -> np.ndarray:
    floor = _fbm(rng, n, (32, 16))
    img = _mix(np.broadcast_to(np.float32([0.08, 0.17, 0.06]), (n, n, 3)).copy(),
               (0.22, 0.30, 0.12), floor)
    for _ in range(900):
        g = rng.uniform(0.28, 0.52)
        c = (rng.uniform(0.08, 0.22), g, rng.uniform(0.06, 0.16))
        x, y, r = rng.random() * n, rng.random() * n, rng.uniform(6, 13)
        _stamp(img, x + 2, y + 2, r, (0.03, 0.07, 0.03), 0.6, soft=2)  # shadow
        _stamp(img, x, y, r, c, 1.0, shade=0.45, soft=0.8)
    return img * _grain(rng, n, 0.10)


_BIOME_TEXTURE = {
    "grassland": _grassland,
    "desert": _desert,
    "snowfield": _snowfield,
    "ocean": _ocean,
    "city": _city,
    "forest": _forest,
}


def biome_texture(biome: str, world_seed: int = WORLD_SEED) -> np.ndarray:
    """The biome's tileable texture, float32 (TILE, TILE, 3) in [0, 1]."""
    rng = np.random.default_rng([world_seed, BIOMES.index(biome)])
    return np.clip(_BIOME_TEXTURE[biome](rng, TILE), 0, 1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _mip_tiles(biome: str, world_seed: int) -> tuple[torch.Tensor, ...]:
    """Mip levels of the texture, each (1, 3, P, P) wrap-padded so a view never needs a mod.

    Level l has TILE/2^l texels. Padding: 2 before (bilinear taps) and enough after
    for the widest view (REF_SIZE * 2^-ZOOM_RANGE[0] texels at level 0).
    """
    tex = torch.from_numpy(biome_texture(biome, world_seed)).permute(2, 0, 1)[None]
    levels = []
    for level in range(_MIP_LEVELS):
        n = tex.shape[-1]
        after = int(math.ceil(REF_SIZE * 2 ** -ZOOM_RANGE[0] / 2**level)) + 4
        idx = torch.arange(-2, n + after) % n
        levels.append(tex[:, :, idx][:, :, :, idx].contiguous())
        tex = F.avg_pool2d(tex, 2)
    return tuple(levels)


# ---------------------------------------------------------------------------------
# Object, weather and light
# ---------------------------------------------------------------------------------

OBJECT_RGB = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.18, 0.82, 0.22),
    "blue": (0.15, 0.35, 0.96),
    "yellow": (0.98, 0.86, 0.10),
    "purple": (0.62, 0.20, 0.82),
    "white": (0.97, 0.97, 0.97),
}
# time of day: out = rgb * mult + add
_LIGHT = {
    "day": ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    "sunset": ((0.98, 0.72, 0.54), (0.08, 0.03, 0.04)),
    "night": ((0.30, 0.36, 0.58), (0.01, 0.02, 0.06)),
}
_OBJECT_GLOW = 0.45  # objects take only part of the scene light, so they stay legible at night
OBJECT_SCALE = 2.0
"""Object size against the world of v0/v1 (1.0: a ball about 1.4 DiT tokens wide, which the
DiT rarely drew; 2.0: about 2.75 tokens, the world of the v2 default model)."""
_OBJECT_RADIUS = {k: r * OBJECT_SCALE for k, r in
                  {"ball": 11.0, "cube": 11.0, "triangle": 12.5, "star": 14.0}.items()}  # px at REF_SIZE


@dataclass(frozen=True)
class MotionParams:
    """Per-stream parameters of the three motions (view coordinates in [0, 1], seconds)."""

    size: float
    bounce_period: float
    bounce_height: float
    ground: float
    sway_amp: float
    sway_period: float
    phase: float
    drift_period: tuple[float, float]
    drift_amp: tuple[float, float]
    orbit_radius: float
    orbit_period: float
    orbit_dir: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "MotionParams":
        return MotionParams(
            size=float(rng.uniform(0.9, 1.15)),
            bounce_period=float(rng.uniform(0.8, 1.3)),
            bounce_height=float(rng.uniform(0.22, 0.32)),
            ground=float(rng.uniform(0.64, 0.72)),
            sway_amp=float(rng.uniform(0.05, 0.2)),
            sway_period=float(rng.uniform(5, 9)),
            phase=float(rng.uniform(0, 2 * np.pi)),
            drift_period=(float(rng.uniform(4, 8)), float(rng.uniform(4, 8))),
            drift_amp=(float(rng.uniform(0.18, 0.3)), float(rng.uniform(0.14, 0.24))),
            orbit_radius=float(rng.uniform(0.2, 0.27)),
            orbit_period=float(rng.uniform(2.0, 3.5)),
            orbit_dir=float(rng.choice([-1.0, 1.0])),
        )


def object_position(motion: str, p: MotionParams, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object centre in view coordinates [0, 1] at times t (seconds)."""
    if motion == "bouncing":
        x = 0.5 + p.sway_amp * np.sin(2 * np.pi * t / p.sway_period + p.phase)
        y = p.ground - p.bounce_height * np.abs(np.sin(np.pi * t / p.bounce_period + p.phase))
    elif motion == "drifting":
        x = 0.5 + p.drift_amp[0] * np.sin(2 * np.pi * t / p.drift_period[0] + p.phase)
        y = 0.5 + p.drift_amp[1] * np.sin(2 * np.pi * t / p.drift_period[1] + 2 * p.phase)
    elif motion == "orbiting":
        a = p.phase + p.orbit_dir * 2 * np.pi * t / p.orbit_period
        x = 0.5 + p.orbit_radius * np.cos(a)
        y = 0.5 + 0.85 * p.orbit_radius * np.sin(a)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return x, y


def object_radius(scene: Scene, motion: MotionParams, size: int) -> float:
    """The object's size in view pixels (its shape's radius at a `size`-pixel view)."""
    return shape_radius(scene.shape, size) * motion.size


def shape_radius(shape: str, size: int) -> float:
    """A `shape`'s radius in view pixels at a `size`-pixel view (its typical size)."""
    return _OBJECT_RADIUS[shape] * size / REF_SIZE


def typical_object_radius(size: int) -> float:
    """The object's radius in view pixels at a `size`-pixel view, averaged over shapes and
    sizes: where a stream's first chunk is told to draw it (`DiTConfig.object_hint`)."""
    return float(np.mean(list(_OBJECT_RADIUS.values()))) * size / REF_SIZE


def object_coverage(shape: str, cx: float, cy: float, radius: float, cells: int, cell: float,
                    samples: int = 4) -> torch.Tensor:
    """How much of each cell of a `cells` x `cells` grid (cells `cell` view px wide) the
    object `shape` of `radius` view px at (cx, cy) view px covers: (cells, cells) in [0, 1],
    from `samples` x `samples` points a cell (the object's silhouette at the latent grid)."""
    n = cells * samples
    c = (torch.arange(n, dtype=torch.float32) + 0.5) * (cell / samples)
    d = _sdf(shape, c[None, :] - cx, c[:, None] - cy, radius)  # (n, n), y down
    inside = (0.5 - d).clamp(0, 1)
    return F.avg_pool2d(inside[None, None], samples)[0, 0]


def object_track(scenes: list[Scene], frame_indices: np.ndarray, motion: MotionParams, size: int = REF_SIZE,
                 fps: int = 16) -> np.ndarray:
    """Where the object is in each frame: (F, 3) centre x, y and radius, in view pixels."""
    t = np.asarray(frame_indices, np.float64).reshape(len(scenes)) / fps
    out = np.zeros((len(scenes), 3), np.float32)
    for f, scene in enumerate(scenes):
        x, y = object_position(scene.motion, motion, t[f:f + 1])
        out[f] = (x[0] * size, y[0] * size, object_radius(scene, motion, size))
    return out


def _sdf(shape: str, px: torch.Tensor, py: torch.Tensor, r: float) -> torch.Tensor:
    """Signed distance (px, negative inside) to a shape of size r centred at 0; y down."""
    if shape == "ball":
        return torch.sqrt(px * px + py * py) - r
    if shape == "cube":
        b = 0.85 * r
        qx, qy = px.abs() - b, py.abs() - b
        return torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2) + torch.maximum(qx, qy).clamp(max=0)
    if shape == "triangle":  # equilateral, apex up (Inigo Quilez's sdEquilateralTriangle)
        k = math.sqrt(3.0)
        h = r * 0.95
        x = px.abs() - h
        y = -py + h / k - 0.15 * r
        flip = x + k * y > 0
        x, y = torch.where(flip, (x - k * y) / 2, x), torch.where(flip, (-k * x - y) / 2, y)
        x = x - x.clamp(-2 * h, 0)
        return -torch.sqrt(x * x + y * y) * torch.sign(y)
    if shape == "star":  # five points, one up (Inigo Quilez's sdStar5)
        k1x, k1y = 0.809016994375, -0.587785252292
        k2x, k2y = -k1x, k1y
        x, y = px.abs(), -py
        d = (k1x * x + k1y * y).clamp(min=0)
        x, y = x - 2 * d * k1x, y - 2 * d * k1y
        d = (k2x * x + k2y * y).clamp(min=0)
        x, y = x - 2 * d * k2x, y - 2 * d * k2y
        x, y = x.abs(), y - r
        rf = 0.5
        bax, bay = rf * -k1y, rf * k1x - 1
        h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(0, r)
        return torch.sqrt((x - bax * h) ** 2 + (y - bay * h) ** 2) * torch.sign(y * bax - x * bay)
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=16)
def _weather_layers(kind: str, size: int) -> tuple[tuple[torch.Tensor, float, float, float], ...]:
    """Tileable alpha layers in view coordinates: (alpha (S, S), fall px/frame, wind, sway)."""
    rng = np.random.default_rng([7, WEATHERS.index(kind), size])
    sc = size / REF_SIZE
    thick = max(sc, 0.85)  # particles stay about a pixel wide in small views
    layers = []
    if kind == "rain":
        for count, length, width, alpha, fall in ((110, 10, 1.1, 0.45, 15.0), (150, 7, 0.8, 0.3, 13.0)):
            img = np.zeros((size, size, 1), np.float32)
            for _ in range(int(count * sc * sc)):
                x0, y0 = rng.random(2) * size
                for s in np.linspace(0, length * sc, int(length * sc * 2) + 1):
                    _stamp(img, x0 - 0.2 * s, y0 + s, width * thick, (1.0,), alpha, soft=0.8)
            layers.append((torch.from_numpy(img[..., 0]), fall * sc, -0.2 * fall * sc, 0.0))
    elif kind == "snow":
        for count, radius, alpha, fall, sway in ((90, 2.2, 0.9, 11.0, 3.0), (150, 1.4, 0.7, 9.0, 2.0)):
            img = np.zeros((size, size, 1), np.float32)
            for _ in range(int(count * sc * sc)):
                _stamp(img, *rng.random(2) * size, radius * thick * rng.uniform(0.8, 1.2), (1.0,), alpha,
                       soft=0.8)
            layers.append((torch.from_numpy(img[..., 0]), fall * sc, 0.0, sway * sc))
    return tuple(layers)


_WEATHER_RGB = {"rain": (0.72, 0.78, 0.88), "snow": (1.0, 1.0, 1.0)}
_WEATHER_VEIL = {  # global effect: rgb * keep + add
    "clear": (1.0, (0.0, 0.0, 0.0)),
    "rain": (0.74, (0.07, 0.09, 0.12)),
    "snow": (0.82, (0.15, 0.15, 0.16)),
}


def _weather_alpha(kind: str, size: int, t: np.ndarray) -> torch.Tensor:
    """Weather alpha (F, 1, S, S) at absolute frame indices t: the layers scroll down
    (and sway) over time, in view coordinates."""
    total = torch.zeros(len(t), 1, size, size)
    t = np.asarray(t, np.float64)
    for alpha, fall, wind, sway in _weather_layers(kind, size):
        dy = np.round(t * fall).astype(np.int64) % size
        dx = np.round(t * wind + sway * np.sin(2 * np.pi * t / 40)).astype(np.int64) % size
        tiled = alpha.repeat(2, 2)  # a roll by (dy, dx) is the window starting at (S-dy, S-dx)
        a = torch.stack([tiled[size - y : 2 * size - y, size - x : 2 * size - x] for y, x in zip(dy, dx)])
        total += a[:, None] * (1 - total)
    return total


# ---------------------------------------------------------------------------------
# Frame rendering
# ---------------------------------------------------------------------------------


def render_background(biome: str, cams: np.ndarray, size: int = REF_SIZE, world_seed: int = WORLD_SEED) -> torch.Tensor:
    """(F, 3, S, S) texture views for camera states cams (F, 3), trilinear mip sampling."""
    s = size / REF_SIZE  # world px per texel
    tiles = _mip_tiles(biome, world_seed)
    out = torch.zeros(len(cams), 3, size, size)
    step = 2.0 ** -cams[:, 2] / s  # texels (level 0) per view pixel
    lod = np.clip(np.log2(step), 0, _MIP_LEVELS - 1)
    lo = np.floor(lod + 1e-6).astype(int).clip(0, _MIP_LEVELS - 1)
    frac = np.where(lo < _MIP_LEVELS - 1, lod - lo, 0.0)
    u0 = np.mod((cams[:, 0] - size / 2 * 2.0 ** -cams[:, 2]) / s, TILE)  # left edge, level-0 texels
    v0 = np.mod((cams[:, 1] - size / 2 * 2.0 ** -cams[:, 2]) / s, TILE)
    j = np.arange(size) + 0.5
    for level in range(_MIP_LEVELS):
        weight = np.where(lo == level, 1 - frac, 0.0) + np.where(lo + 1 == level, frac, 0.0)
        sel = np.nonzero(weight > 1e-6)[0]
        if len(sel) == 0:
            continue
        tile = tiles[level]
        n_in, sc = tile.shape[-1], 2.0**level
        # view pixel centres in padded texels of this level, then grid_sample's [-1, 1]
        u = (u0[sel, None] + j[None] * step[sel, None]) / sc + 2  # (f, S)
        v = (v0[sel, None] + j[None] * step[sel, None]) / sc + 2
        gx = torch.from_numpy((2 * u / n_in - 1).astype(np.float32))
        gy = torch.from_numpy((2 * v / n_in - 1).astype(np.float32))
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (f,S,S,2)
        img = F.grid_sample(tile, grid.reshape(1, len(sel) * size, size, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)
        img = img.reshape(3, len(sel), size, size).transpose(0, 1)
        wt = weight[sel]
        if np.all(wt == 1.0):
            out[sel] = img
        else:
            out[sel] += img * torch.from_numpy(wt.astype(np.float32))[:, None, None, None]
    return out


def _paint_object(img: torch.Tensor, scene: Scene, centres: np.ndarray, r: float,
                  light: torch.Tensor, add: torch.Tensor) -> None:
    """Composite the object into img (F, 3, S, S) in place; centres (F, 2) in view px.

    The shape is evaluated on a crop around each centre only (its distance field is
    the costly part)."""
    n, _, size, _ = img.shape
    half = int(math.ceil(1.3 * r)) + 3
    w = 2 * half + 1
    x0 = np.floor(centres[:, 0]).astype(np.int64) - half  # crop origin (F,)
    y0 = np.floor(centres[:, 1]).astype(np.int64) - half
    ar = torch.arange(w, dtype=torch.float32) + 0.5
    px = torch.from_numpy((x0 - centres[:, 0]).astype(np.float32))[:, None, None] + ar[None, None, :]
    py = torch.from_numpy((y0 - centres[:, 1]).astype(np.float32))[:, None, None] + ar[None, :, None]
    d = _sdf(scene.shape, px, py, r)  # (F, w, w)
    alpha = (0.5 - d).clamp(0, 1)[:, None]
    body = torch.tensor(OBJECT_RGB[scene.colour])[None, :, None, None]
    shade = (1 + 0.25 * (-(px + py) / (1.4 * r)).clamp(-1, 1))[:, None]
    rim = (d + 1.6 * r / _OBJECT_RADIUS["ball"] + 0.5).clamp(0, 1)[:, None]  # dark outline inside the edge
    obj = (body * shade * (1 - rim) + 0.15 * body * rim) * (_OBJECT_GLOW + (1 - _OBJECT_GLOW) * light) + add
    for i in range(n):  # paste, clipped to the frame
        ya, yb = max(y0[i], 0), min(y0[i] + w, size)
        xa, xb = max(x0[i], 0), min(x0[i] + w, size)
        if ya >= yb or xa >= xb:
            continue
        cy, cx = slice(ya - y0[i], yb - y0[i]), slice(xa - x0[i], xb - x0[i])
        a = alpha[i, :, cy, cx]
        img[i, :, ya:yb, xa:xb] = img[i, :, ya:yb, xa:xb] * (1 - a) + obj[i, :, cy, cx] * a


def render_frames(
    scenes: list[Scene],
    cameras: np.ndarray,
    frame_indices: np.ndarray,
    motion: MotionParams,
    size: int = REF_SIZE,
    fps: int = 16,
    world_seed: int = WORLD_SEED,
) -> np.ndarray:
    """Frames (F, S, S, 3) uint8 for per-frame scenes, camera states (F, 3) and the
    absolute frame indices that drive the object's motion and the weather animation."""
    n = len(scenes)
    cameras = np.asarray(cameras, np.float64).reshape(n, 3)
    frame_indices = np.asarray(frame_indices).reshape(n)
    out = torch.zeros(n, 3, size, size)
    biomes = np.array([sc.biome for sc in scenes])
    for biome in dict.fromkeys(biomes):
        sel = np.nonzero(biomes == biome)[0]
        out[sel] = render_background(biome, cameras[sel], size, world_seed)

    start = 0
    while start < n:  # runs of one scene
        end = start + 1
        while end < n and scenes[end] == scenes[start]:
            end += 1
        scene, t = scenes[start], frame_indices[start:end]
        img = out[start:end]  # a view: edited in place
        mult, add = (torch.tensor(v)[None, :, None, None] for v in _LIGHT[scene.time])
        keep, veil = _WEATHER_VEIL[scene.weather]
        ox, oy = object_position(scene.motion, motion, t / fps)
        r = object_radius(scene, motion, size)
        img.mul_(mult).add_(add)
        _paint_object(img, scene, np.stack([ox, oy], 1) * size, r, mult, add)
        img.mul_(keep).add_(torch.tensor(veil)[None, :, None, None] * mult)
        if scene.weather != "clear":
            wa = _weather_alpha(scene.weather, size, t)
            wc = torch.tensor(_WEATHER_RGB[scene.weather])[None, :, None, None] * mult + add
            img.mul_(1 - wa).add_(wc * wa)
        start = end
    return out.clamp_(0, 1).mul_(255).add_(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# ---------------------------------------------------------------------------------
# Camera programs
# ---------------------------------------------------------------------------------


def pan_to_px_per_frame(pan_view_widths_per_s: float, size: int, fps: int) -> float:
    """A pan in view widths per second as view pixels per frame."""
    return pan_view_widths_per_s * size / fps


def integrate_camera(start: np.ndarray, commands: np.ndarray) -> np.ndarray:
    """Camera states (F, 3) from a start state and per-frame commands (F, 3).

    Commands are [dx, dy] in VIEW px/frame (converted to world px by the zoom in force)
    and dzoom in log2/frame. Frame 0 is at `start`; frame f moves by command f. Zoom is
    clamped to ZOOM_RANGE.
    """
    cams = np.zeros((len(commands), 3), np.float64)
    cam = np.asarray(start, np.float64).copy()
    for f, (dx, dy, dz) in enumerate(np.asarray(commands, np.float64)):
        if f > 0:
            z = float(np.clip(cam[2] + dz, *ZOOM_RANGE))
            k = 2.0 ** -cam[2]
            cam = np.array([cam[0] + dx * k, cam[1] + dy * k, z])
        cams[f] = cam
    return cams


def random_camera_program(rng: np.random.Generator, n_frames: int, size: int) -> np.ndarray:
    """Piecewise-constant commands (F, 3): stills, pans of random direction at 0-6 px/frame
    (at REF_SIZE, mostly <= 4), and occasional zooms (|dzoom| <= 0.03/frame)."""
    sc = size / REF_SIZE
    cmds = np.zeros((n_frames, 3), np.float64)
    f = 0
    while f < n_frames:
        n = int(rng.integers(8, 33))
        kind = rng.choice(4, p=[0.25, 0.5, 0.13, 0.12])  # still, pan, zoom, pan + zoom
        cmd = np.zeros(3)
        if kind in (1, 3):
            speed = rng.uniform(0.3, 4.0) if rng.random() < 0.75 else rng.uniform(4.0, 6.0)
            if rng.random() < 0.5:
                angle = rng.integers(4) * np.pi / 2
            else:
                angle = rng.uniform(0, 2 * np.pi)
            cmd[:2] = speed * sc * np.cos(angle), speed * sc * np.sin(angle)
        if kind in (2, 3):
            cmd[2] = rng.choice([-1.0, 1.0]) * rng.uniform(0.01, 0.03)
        cmds[f : f + n] = cmd
        f += n
    return cmds


# ---------------------------------------------------------------------------------
# Clips and streams
# ---------------------------------------------------------------------------------


@dataclass
class Clip:
    frames: np.ndarray  # (F, H, W, 3) uint8
    camera: np.ndarray  # (F, 3) float32 [x, y, zoom_log2], world px
    velocity: np.ndarray  # (F, 3) float32, camera[f] - camera[f-1]; [0] = command at frame 0
    scenes: list[Scene]
    segments: list[tuple[int, str]]  # (start frame, caption)
    objects: np.ndarray  # (F, 3) float32: the object's centre x, y and radius, view px
    switch_frames: list[int] = field(default_factory=list)
    fps: int = 16

    def prompt_at(self, f: int) -> str:
        """The caption in force at frame f."""
        text = self.segments[0][1]
        for start, cap in self.segments:
            if start <= f:
                text = cap
        return text


def render_clip(
    seed: int,
    n_frames: int = 64,
    size: int = REF_SIZE,
    fps: int = 16,
    switch: bool | None = None,
    camera: str = "random",
    world_seed: int = WORLD_SEED,
    object_start: str = "random",
    switch_share: float = 0.3,
) -> Clip:
    """A clip, deterministic from `seed`. `switch=None`: a share `switch_share` of clips
    change 1-3 attributes mid-clip. `camera`: "random" (a random program) or "still".
    `object_start`: "random" (the motion's phase, so where the object is at the clip's
    first frame, drawn at random) or "fixed" (phase 0: a bouncing object starts on the
    ground at the middle, a drifting one at the centre, an orbiting one right of it; the
    rest of the motion still random), so that the first chunk of a stream, made from
    noise, has one place to draw the object instead of an average over all of them."""
    if object_start not in ("random", "fixed"):
        raise ValueError(f"object_start must be 'random' or 'fixed' (got {object_start!r})")
    rng = np.random.default_rng([seed, 20251122])
    scene = sample_scene(rng)
    motion = MotionParams.sample(rng)
    if object_start == "fixed":
        motion = replace(motion, phase=0.0)
    s = size / REF_SIZE
    start = np.array([rng.uniform(0, TILE) * s, rng.uniform(0, TILE) * s,
                      0.0 if rng.random() < 0.7 else rng.uniform(-0.5, 0.5)])
    if camera == "random":
        cmds = random_camera_program(rng, n_frames, size)
    elif camera == "still":
        cmds = np.zeros((n_frames, 3))
    else:
        raise ValueError(f"camera must be 'random' or 'still', not {camera!r}")
    cams = integrate_camera(start, cmds)
    switch = bool(rng.random() < switch_share) if switch is None else switch
    scenes = [scene] * n_frames
    segments = [(0, training_caption(scene, rng))]
    switch_frames: list[int] = []
    if switch and n_frames >= 4:
        sf = int(rng.integers(n_frames // 4, 3 * n_frames // 4 + 1))
        new = change_scene(scene, rng, int(rng.integers(1, 4)))
        scenes = [scene] * sf + [new] * (n_frames - sf)
        segments.append((sf, training_caption(new, rng)))
        switch_frames.append(sf)
    frames = render_frames(scenes, cams, np.arange(n_frames), motion, size, fps, world_seed)
    vel = np.diff(cams, axis=0, prepend=cams[:1])
    vel[0] = [cmds[0, 0] * 2.0 ** -cams[0, 2], cmds[0, 1] * 2.0 ** -cams[0, 2], cmds[0, 2]]
    return Clip(frames, cams.astype(np.float32), vel.astype(np.float32), scenes, segments,
                object_track(scenes, np.arange(n_frames), motion, size, fps), switch_frames, fps)


class WorldStream:
    """The world rendered as a stream: the eval's ground truth under commanded motion.

    Camera velocity is in world px/frame (= view px/frame at zoom 0) and log2 zoom/frame.
    Frame f > 0 of the stream is rendered after moving the camera by the velocity in force.
    """

    def __init__(self, scene: Scene, seed: int = 0, size: int = REF_SIZE, fps: int = 16,
                 world_seed: int = WORLD_SEED) -> None:
        rng = np.random.default_rng([seed, 77])
        self.scene = scene
        self.size, self.fps, self.world_seed = size, fps, world_seed
        self.motion = MotionParams.sample(rng)
        s = size / REF_SIZE
        self.camera = np.array([rng.uniform(0, TILE) * s, rng.uniform(0, TILE) * s, 0.0])
        self.frame_index = 0

    def set_scene(self, scene: Scene) -> None:
        self.scene = scene

    def render(self, n_frames: int, velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
        """The next n_frames frames (n, S, S, 3) uint8 under a constant velocity."""
        dx, dy, dz = (float(v) for v in velocity)
        cams = np.zeros((n_frames, 3))
        for i in range(n_frames):
            if self.frame_index + i > 0:
                z = float(np.clip(self.camera[2] + dz, *ZOOM_RANGE))
                self.camera = self.camera + [dx, dy, 0.0]
                self.camera[2] = z
            cams[i] = self.camera
        idx = np.arange(self.frame_index, self.frame_index + n_frames)
        self.frame_index += n_frames
        return render_frames([self.scene] * n_frames, cams, idx, self.motion, self.size, self.fps,
                             self.world_seed)
