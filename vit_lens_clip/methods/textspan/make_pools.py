"""Build the shipped TextSpan text pools: ``pools/descriptions.txt`` and ``pools/words.txt``.

Run ``python -m vit_lens_clip.methods.textspan.make_pools`` to regenerate both files. The output is deterministic (no
random numbers): combinatorial families are thinned by taking every s-th combination.

* descriptions: short image descriptions built from this module's own vocabularies and templates, covering
  colours, shapes, textures, materials, patterns, positions, counts, sizes, places, geography, objects, animals,
  people and actions, letters and digits, art styles, lighting, weather, time of day and emotions, with many
  descriptions of the project's synthetic shapes world.
* words: the most common English words (``wordfreq``), alphabetic only.

Both pools leave out every text that matches ``better_profanity``'s maintained profanity list (``offensive``);
tests/unit/methods/textspan/test_pools.py checks the shipped files against it.
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path

POOL_DIR = Path(__file__).parent / "pools"
N_WORDS = 3500

# ---------------------------------------------------------------- the synthetic shapes world
WORLD_SHAPES = {
    "circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses",
    "heart": "hearts", "diamond": "diamonds", "ring": "rings", "rectangle": "rectangles", "oval": "ovals",
    "hexagon": "hexagons", "pentagon": "pentagons", "crescent": "crescents", "arrow": "arrows",
}
WORLD_COLOURS = [
    "red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "grey", "cyan",
    "magenta", "teal",
]
# The 3x3 grid of positions, each as a phrase that follows a noun.
GRID_POSITIONS = {
    "top left": "in the top left corner", "top centre": "at the top", "top right": "in the top right corner",
    "middle left": "on the left", "centre": "in the centre", "middle right": "on the right",
    "bottom left": "in the bottom left corner", "bottom centre": "at the bottom",
    "bottom right": "in the bottom right corner",
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
               9: "nine", 10: "ten"}
WORLD_PLACES = {"water": "on water", "grass": "on grass", "sand": "on sand", "snow": "on snow",
                "sky": "against the sky"}
WORLD_SIZES = ["small", "large", "tiny", "big", "huge"]
BIRDS = ["a bird", "a waterbird", "a landbird"]
WATERBIRDS = ["duck", "gull", "seagull", "pelican", "heron", "swan", "goose", "albatross", "cormorant",
              "puffin", "tern", "loon", "grebe", "flamingo", "kingfisher"]
LANDBIRDS = ["sparrow", "robin", "crow", "woodpecker", "finch", "warbler", "jay", "cardinal", "wren", "owl",
             "hawk", "eagle", "pigeon", "parrot", "hummingbird"]

# ---------------------------------------------------------------- the wider world
COLOURS = [
    "red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "grey", "gold",
    "silver", "beige", "cream", "crimson", "scarlet", "maroon", "burgundy", "navy blue", "sky blue",
    "turquoise", "teal", "cyan", "lime green", "olive green", "dark green", "emerald", "mint green",
    "lavender", "violet", "magenta", "peach", "coral", "salmon pink", "tan", "khaki", "ivory", "charcoal",
    "bronze", "copper", "rust", "ochre", "indigo", "neon green", "pastel blue",
]
TEXTURES = [
    "furry", "fluffy", "rough", "smooth", "shiny", "glossy", "matte", "bumpy", "wrinkled", "cracked",
    "scaly", "feathery", "spiky", "hairy", "woolly", "grainy", "sandy", "muddy", "wet", "dry", "dusty",
    "rusty", "mossy", "slimy", "sticky", "velvety", "silky", "leathery", "porous", "knitted", "woven",
    "crumpled", "polished", "frosted", "bubbly", "ribbed", "quilted", "pitted", "peeling", "gritty",
]
MATERIALS = [
    "wood", "metal", "glass", "plastic", "stone", "marble", "concrete", "brick", "paper", "cardboard",
    "cloth", "leather", "wool", "cotton", "silk", "rubber", "clay", "ceramic", "porcelain", "steel",
    "iron", "gold", "silver", "copper", "bronze", "ice", "sand", "straw", "bamboo", "wax", "foam", "denim",
    "granite", "crystal", "velvet", "lace",
]
PATTERNS = [
    "striped", "polka dot", "checkered", "plaid", "zigzag", "floral", "paisley", "camouflage", "leopard print",
    "zebra print", "houndstooth", "herringbone", "spiral", "wavy", "geometric", "honeycomb", "tartan",
    "chevron", "swirling", "dotted", "grid", "mosaic", "tiled", "speckled", "marbled", "tie-dye",
]
ARTICLE_AN_EXCEPTIONS = {"one", "uniform", "university", "unicorn", "european", "useful", "user", "utensil"}

SCENES = [
    "beach", "forest", "city street", "desert", "mountain", "lake", "river", "ocean", "field of grass",
    "snowy landscape", "park", "garden", "farm", "jungle", "savanna", "swamp", "cave", "canyon", "waterfall",
    "glacier", "volcano", "island", "harbour", "port", "bridge", "highway", "parking lot", "train station",
    "airport", "subway station", "market", "shopping mall", "supermarket", "restaurant", "cafe", "bar",
    "kitchen", "living room", "bedroom", "bathroom", "office", "classroom", "library", "museum", "church",
    "temple", "mosque", "castle", "palace", "stadium", "playground", "swimming pool", "gym", "hospital",
    "factory", "construction site", "warehouse", "barn", "village", "skyline", "rooftop", "alley",
    "countryside", "vineyard", "orchard", "meadow", "pond", "coral reef", "underwater scene", "night sky",
    "sunset sky", "cloudy sky", "clear blue sky", "snow field", "sand dune", "rocky shore", "cliff", "valley",
    "hillside", "rainforest", "tundra", "marsh", "bamboo forest", "pine forest", "wheat field",
    "flower field", "concert hall", "theatre stage", "laboratory", "space station", "outer space",
]
GEOGRAPHY = [
    "Japan", "China", "India", "Thailand", "Vietnam", "Indonesia", "Korea", "Nepal", "Tibet", "Mongolia",
    "Russia", "Siberia", "France", "Italy", "Spain", "Portugal", "Greece", "Germany", "the Netherlands",
    "Norway", "Sweden", "Iceland", "Ireland", "Scotland", "England", "Switzerland", "Austria", "Poland",
    "Turkey", "Egypt", "Morocco", "Kenya", "Tanzania", "South Africa", "Nigeria", "Ethiopia", "Madagascar",
    "the Sahara", "Saudi Arabia", "Iran", "Israel", "the United States", "Canada", "Alaska", "Mexico",
    "Cuba", "Brazil", "Argentina", "Peru", "Chile", "Colombia", "the Amazon", "Patagonia", "Australia",
    "New Zealand", "Hawaii", "the Arctic", "Antarctica", "the Caribbean", "the Alps", "the Himalayas",
    "Scandinavia", "the Middle East", "Southeast Asia", "Central Africa", "the Mediterranean",
]
CITIES = [
    "Paris", "London", "New York", "Tokyo", "Rome", "Venice", "Barcelona", "Istanbul", "Cairo", "Mumbai",
    "Beijing", "Shanghai", "Hong Kong", "Singapore", "Sydney", "Rio de Janeiro", "Moscow", "Berlin",
    "Amsterdam", "Dubai", "San Francisco", "Los Angeles", "Chicago", "Mexico City", "Bangkok", "Kyoto",
    "Prague", "Vienna", "Lisbon", "Havana", "Marrakesh", "Jerusalem", "Seoul", "Delhi", "Buenos Aires",
    "Cape Town", "Nairobi", "Stockholm",
]
OBJECTS = [
    "car", "bus", "truck", "bicycle", "motorcycle", "train", "airplane", "helicopter", "boat", "sailboat",
    "ship", "tractor", "rocket", "chair", "table", "sofa", "bed", "lamp", "clock", "mirror", "window", "door",
    "staircase", "fence", "bench", "umbrella", "backpack", "suitcase", "handbag", "hat", "shoe", "boot",
    "dress", "shirt", "jacket", "scarf", "glove", "watch", "ring", "necklace", "pair of glasses", "book",
    "newspaper", "pen", "pencil", "laptop", "computer", "keyboard", "phone", "camera", "television", "radio",
    "guitar", "piano", "violin", "drum", "trumpet", "ball", "football", "basketball", "tennis racket",
    "skateboard", "surfboard", "kite", "toy", "teddy bear", "doll", "balloon", "candle", "vase", "bowl",
    "cup", "mug", "plate", "fork", "knife", "spoon", "bottle", "wine glass", "teapot", "pot", "pan", "oven",
    "refrigerator", "sink", "toilet", "bathtub", "towel", "pillow", "blanket", "rug", "painting", "sculpture",
    "statue", "fountain", "flag", "sign", "traffic light", "street lamp", "mailbox", "tent", "house", "tower",
    "skyscraper", "lighthouse", "windmill", "tree", "palm tree", "flower", "rose", "sunflower", "cactus",
    "mushroom", "leaf", "rock", "shell", "apple", "banana", "orange", "lemon", "strawberry", "grapes",
    "pineapple", "watermelon", "bread", "cake", "pizza", "sandwich", "hamburger", "salad", "bowl of soup",
    "plate of pasta", "bowl of rice", "sushi", "ice cream", "cookie", "chocolate", "cup of coffee", "egg",
    "cheese", "carrot", "tomato", "pumpkin", "key", "lock", "hammer", "saw", "scissors", "rope", "chain",
    "coin", "banknote", "map", "globe", "envelope", "gift box", "basket", "ladder", "wheel", "tire", "anchor",
    "sword", "shield", "crown", "mask", "robot", "microscope", "telescope",
]
ANIMALS = [
    "dog", "puppy", "cat", "kitten", "horse", "cow", "pig", "sheep", "goat", "chicken", "rooster", "duck",
    "rabbit", "hamster", "mouse", "rat", "squirrel", "fox", "wolf", "bear", "polar bear", "panda", "koala",
    "kangaroo", "lion", "tiger", "leopard", "cheetah", "elephant", "giraffe", "zebra", "hippo", "rhino",
    "camel", "deer", "moose", "monkey", "gorilla", "chimpanzee", "bat", "hedgehog", "otter", "beaver",
    "raccoon", "skunk", "seal", "walrus", "whale", "dolphin", "shark", "fish", "goldfish", "octopus",
    "jellyfish", "crab", "lobster", "starfish", "turtle", "tortoise", "frog", "toad", "snake", "lizard",
    "crocodile", "dinosaur", "butterfly", "bee", "ant", "spider", "ladybug", "dragonfly", "snail", "worm",
    "bird", "parrot", "owl", "eagle", "penguin", "flamingo", "swan", "peacock", "pigeon",
]
PEOPLE = [
    "man", "woman", "child", "baby", "boy", "girl", "old man", "old woman", "teenager", "family",
    "couple", "soldier", "police officer", "doctor", "nurse", "chef", "farmer", "teacher", "student",
    "athlete", "dancer", "musician", "singer", "painter", "fisherman", "firefighter", "astronaut",
    "businessman", "tourist", "clown", "bride", "monk", "surfer", "skier", "cyclist", "runner",
]
ACTIONS = [
    "walking", "running", "sitting", "standing", "sleeping", "eating", "drinking", "reading", "writing",
    "cooking", "laughing", "crying", "smiling", "dancing", "singing", "swimming", "climbing", "jumping",
    "riding a bike", "driving a car", "playing football", "playing the guitar", "painting", "talking on the phone",
    "taking a photo", "holding an umbrella", "waving", "hugging", "fishing", "skiing", "surfing", "shopping",
    "working on a laptop", "carrying a bag", "looking at the camera", "praying",
]
ART_STYLES = [
    "impressionist", "cubist", "surrealist", "abstract", "realistic", "minimalist", "pop art", "art nouveau",
    "art deco", "baroque", "renaissance", "gothic", "medieval", "romantic", "expressionist", "pointillist",
    "ukiyo-e", "anime", "manga", "cartoon", "comic book", "pixel art", "low poly", "psychedelic",
    "graffiti", "folk art", "tribal", "byzantine", "chinese ink", "japanese woodblock", "aboriginal dot",
    "steampunk", "cyberpunk", "vaporwave", "retro", "vintage", "futuristic", "childlike", "naive",
]
MEDIA = [
    "oil painting", "watercolour painting", "acrylic painting", "pencil sketch", "charcoal drawing",
    "ink drawing", "pastel drawing", "crayon drawing", "chalk drawing", "digital painting", "3d render",
    "vector illustration", "woodcut print", "linocut", "engraving", "etching", "mosaic", "stained glass window",
    "fresco", "tapestry", "embroidery", "collage", "photograph", "black and white photograph",
    "polaroid photo", "film photograph", "x-ray image", "infrared photo", "thermal image", "microscope image",
    "satellite image", "screenshot", "diagram", "chart", "map", "blueprint", "poster", "postcard",
    "book cover", "album cover", "sticker", "emoji", "icon", "logo", "clip art", "tattoo", "sculpture",
    "origami", "paper cutout", "clay model", "lego model", "snow sculpture", "sand sculpture",
]
LIGHTING = [
    "bright sunlight", "soft light", "harsh light", "dim light", "candlelight", "neon lights",
    "backlighting", "a silhouette", "strong shadows", "low light", "studio lighting", "a spotlight",
    "golden hour light", "blue hour light", "moonlight", "firelight", "fluorescent light", "dappled light",
    "high contrast", "low contrast", "overexposure", "underexposure", "lens flare", "reflections",
    "warm tones", "cool tones",
]
WEATHER = [
    "rain", "heavy rain", "a thunderstorm", "lightning", "snow", "a blizzard", "fog", "mist", "haze",
    "clouds", "a clear sky", "sunshine", "wind", "a storm", "a rainbow", "hail", "frost", "a heatwave",
    "a sandstorm", "a tornado", "drizzle", "overcast skies",
]
TIMES = [
    "at sunrise", "at dawn", "in the morning", "at noon", "in the afternoon", "at sunset", "at dusk",
    "in the evening", "at night", "at midnight", "in spring", "in summer", "in autumn", "in winter",
    "during the holidays", "on a sunny day", "on a rainy day", "on a winter night",
]
EMOTIONS = [
    "happy", "sad", "angry", "scared", "surprised", "calm", "excited", "bored", "tired", "worried",
    "lonely", "proud", "confused", "disgusted", "joyful", "peaceful", "nervous", "relaxed", "serious",
    "playful", "shy", "hopeful", "grumpy", "curious", "thoughtful", "anxious", "cheerful", "gloomy",
    "romantic", "mysterious",
]
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WORDS_ON_SIGNS = ["stop", "open", "closed", "exit", "sale", "hello", "love", "welcome", "danger", "taxi",
                  "hotel", "police", "coffee", "bakery", "pharmacy", "school", "museum", "parking", "no entry",
                  "push", "pull", "free"]
PHOTO_PROPERTIES = [
    "a blurry photo", "a sharp photo", "a black and white photo", "a sepia photo", "a colourful photo",
    "a faded photo", "a grainy photo", "a noisy photo", "a low resolution image", "a high resolution image",
    "a pixelated image", "a close-up photo", "a macro photo", "a wide-angle photo", "a panoramic photo",
    "an aerial view", "a bird's-eye view", "a view from below", "a view from above", "a side view",
    "a front view", "a photo taken from far away", "a photo taken through a window", "a reflection in a mirror",
    "a photo with a fisheye lens", "a photo with a shallow depth of field", "a long exposure photo",
    "a motion blur photo", "a double exposure", "a cropped photo", "a tilted photo", "an upside down photo",
    "a selfie", "a portrait", "a group photo", "a landscape photo", "a still life", "a snapshot",
    "a product photo on a white background", "a frame from a video game", "a frame from a movie",
    "a photo of a screen", "a scanned document", "a page of handwritten notes", "a page of printed text",
    "a mostly empty image", "a cluttered image", "a symmetric image", "an image with a plain background",
    "an image with a busy background", "an image with a border", "an image with a watermark",
    "an image with a caption", "a meme", "a collage of several photos",
]
GENERIC_COUNTS = {
    "object": "objects", "person": "people", "car": "cars", "dog": "dogs", "cat": "cats", "bird": "birds",
    "tree": "trees", "flower": "flowers", "building": "buildings", "ball": "balls", "apple": "apples",
    "chair": "chairs", "boat": "boats", "coin": "coins", "candle": "candles", "book": "books",
    "cup": "cups", "horse": "horses", "child": "children", "window": "windows",
}
QUANTITY_PHRASES = ["many", "a few", "several", "a pair of", "a dozen", "a crowd of", "a row of",
                    "a pile of", "a group of", "hundreds of"]
IMAGE_POSITIONS = [
    "in the top left corner", "in the top right corner", "in the bottom left corner",
    "in the bottom right corner", "in the centre", "at the top", "at the bottom", "on the left",
    "on the right", "in the foreground", "in the background", "at the edge of the image",
]
SIZES = ["tiny", "small", "medium-sized", "large", "huge", "giant", "miniature", "tall", "short", "long",
         "wide", "narrow", "thin", "thick", "round", "flat"]


def with_article(phrase: str) -> str:
    """Prefix 'a' or 'an' by the first letter (with a few spelled-out exceptions)."""
    first_word = phrase.split()[0].lower()
    vowel = phrase[0].lower() in "aeiou" and first_word not in ARTICLE_AN_EXCEPTIONS
    return ("an " if vowel or first_word in {"hour", "honest", "x-ray"} else "a ") + phrase


def every_nth(items: Iterable, n_wanted: int) -> list:
    """Deterministically thin a list of combinations to about n_wanted evenly spread items."""
    items = list(items)
    if n_wanted >= len(items):
        return items
    step = len(items) / n_wanted
    return [items[int(i * step)] for i in range(n_wanted)]


def shapes_world_descriptions() -> list[str]:
    """Descriptions of the synthetic shapes world: shapes, colours, 3x3 positions, counts, places, birds."""
    out: list[str] = []
    shapes = list(WORLD_SHAPES)
    positions = list(GRID_POSITIONS.values())
    places = list(WORLD_PLACES.values())
    out += [with_article(f"{c} {s}") for c in WORLD_COLOURS for s in shapes]
    out += [with_article(s) for s in shapes] + [f"a shape that looks like {with_article(s)}" for s in shapes]
    out += [f"{with_article(s)} {p}" for s in shapes for p in positions]
    out += every_nth((with_article(f"{c} {s} {p}") for c, s, p in itertools.product(WORLD_COLOURS, shapes, positions)), 180)
    out += [f"an object {p}" for p in positions] + [f"a shape {p}" for p in positions]
    out += [f"something {p} of the image" for p in positions]
    out += [with_article(f"{c} object {p}") for c in WORLD_COLOURS for p in positions][::3]
    out += [with_article(f"{name} shape") for name in ("top left", "centred", "off-centre")]
    for n in (1, 2, 3):
        word = COUNT_WORDS[n]
        noun = "object" if n == 1 else "objects"
        out += [f"{word} {noun}", f"{word} {'shape' if n == 1 else 'shapes'}", f"exactly {word} {noun}"]
        out += [f"{word} {noun} {p}" for p in places]
        out += [f"{word} {s if n == 1 else WORLD_SHAPES[s]}" for s in shapes]
    out += every_nth((f"{COUNT_WORDS[n]} {c} {s if n == 1 else WORLD_SHAPES[s]}"
                      for n, c, s in itertools.product((1, 2, 3), WORLD_COLOURS, shapes)), 110)
    out += ["a single object", "a single shape", "a pair of shapes", "many shapes", "several shapes",
            "no objects", "an empty background", "two shapes side by side", "three shapes in a row",
            "two shapes of the same colour", "two shapes of different colours", "shapes of different sizes"]
    out += [f"{with_article(c + ' ' + s)} and {with_article(c2 + ' ' + s2)}" for (c, s), (c2, s2) in every_nth(
        itertools.permutations(itertools.product(WORLD_COLOURS[:8], shapes[:8]), 2), 50)]
    out += [f"{with_article(s)} {p}" for s in shapes for p in places]
    out += every_nth((with_article(f"{c} {s} {p}") for c, s, p in itertools.product(WORLD_COLOURS, shapes, places)), 80)
    out += [with_article(f"{size} {s}") for size in WORLD_SIZES for s in shapes]
    out += [with_article(f"{size} {c} shape") for size in WORLD_SIZES for c in WORLD_COLOURS][::3]
    out += [with_article(f"{kind} {s}") for kind in ("filled", "hollow", "outlined") for s in shapes]
    out += [with_article(f"{c} background") for c in WORLD_COLOURS]
    out += ["water", "grass", "sand", "snow", "sky", "a water background", "a grass background",
            "a sand background", "a snow background", "a sky background", "blue water", "green grass",
            "yellow sand", "white snow", "a blue sky", "a lake", "the sea", "a lawn", "a sandy beach",
            "a snowy field"]
    out += BIRDS + [f"{b} {p}" for b in BIRDS for p in places]
    out += ["a bird flying in the sky", "a bird standing on the ground", "a bird sitting on a branch",
            "a bird swimming on a lake", "a waterbird on land", "a landbird on water",
            "a waterbird in a forest", "a landbird at the beach", "a seabird", "a songbird",
            "a bird in a bamboo forest", "a bird in the ocean"]
    out += [with_article(f"{b}") for b in WATERBIRDS + LANDBIRDS]
    out += [with_article(f"{b} on water") for b in WATERBIRDS] + [with_article(f"{b} in a forest") for b in LANDBIRDS]
    return out


def general_descriptions() -> list[str]:
    """Descriptions of everyday images: properties, places, things, people, text, style and mood."""
    out: list[str] = []
    out += [with_article(f"{c} object") for c in COLOURS] + [f"something {c}" for c in COLOURS]
    out += [f"an image dominated by {c}" for c in COLOURS[::2]] + [f"the colour {c}" for c in COLOURS]
    out += [f"{c} and {c2}" for c, c2 in every_nth(itertools.permutations(COLOURS[:20], 2), 30)]
    out += ["a colourful image", "a monochrome image", "bright colours", "pastel colours", "dark colours",
            "muted colours", "a rainbow of colours", "a black and white pattern"]
    out += [with_article(f"{t} texture") for t in TEXTURES] + [with_article(f"{t} surface") for t in TEXTURES]
    out += [f"something {t}" for t in TEXTURES[::2]]
    out += [f"an object made of {m}" for m in MATERIALS] + [with_article(f"{m} surface") for m in MATERIALS]
    out += [f"a close-up of {m}" for m in MATERIALS[::2]]
    out += [with_article(f"{p} pattern") for p in PATTERNS] + [f"{p} fabric" for p in PATTERNS]
    out += [with_article(f"{p} wall") for p in PATTERNS[:12]]
    out += [f"a photo of {with_article(s)}" for s in SCENES] + [f"a view of {with_article(s)}" for s in SCENES[::2]]
    out += [f"a photo taken in {g}" for g in GEOGRAPHY] + [f"a landscape in {g}" for g in GEOGRAPHY]
    out += [f"a street in {c}" for c in CITIES] + [f"a photo taken in {c}" for c in CITIES]
    out += [f"a famous landmark in {c}" for c in CITIES[::2]]
    out += [f"traditional food from {g}" for g in GEOGRAPHY[::3]]
    out += [f"traditional clothing from {g}" for g in GEOGRAPHY[::3]]
    out += [f"a map of {g}" for g in GEOGRAPHY[::4]]
    out += [f"a photo of {with_article(o)}" for o in OBJECTS[::2]] + [with_article(o) for o in OBJECTS[1::2]]
    out += [f"a close-up of {with_article(o)}" for o in OBJECTS[::4]]
    out += [f"{with_article(c)} {o}" for c, o in every_nth(itertools.product(COLOURS[:16], OBJECTS), 80)]
    out += [f"{with_article(o)} made of {m}" for o, m in every_nth(itertools.product(OBJECTS, MATERIALS), 50)]
    out += [f"a photo of {with_article(a)}" for a in ANIMALS] + [f"{with_article(a)} in the wild" for a in ANIMALS[::2]]
    out += [f"a cartoon {a}" for a in ANIMALS[::3]] + [f"a baby {a}" for a in ANIMALS[::4]]
    out += [f"{with_article(a)} {p}" for a, p in every_nth(itertools.product(ANIMALS, IMAGE_POSITIONS), 40)]
    out += [f"{with_article(a)} in {with_article(s)}" for a, s in every_nth(itertools.product(ANIMALS, SCENES), 40)]
    out += [f"{with_article(p)} {a}" for p, a in every_nth(itertools.product(PEOPLE, ACTIONS), 120)]
    out += [f"a photo of {with_article(p)}" for p in PEOPLE]
    out += ["a crowd of people", "a group of friends", "people at a party", "people in a meeting",
            "a person seen from behind", "a face", "a close-up of a face", "a hand", "two hands", "feet",
            "an eye", "a smile", "a person wearing a mask", "a person wearing glasses", "a person with a hat",
            "a person with long hair", "a bald man", "a person with a beard", "a person in uniform",
            "a person in a suit", "a person in a costume", "a shadow of a person", "an empty street",
            "a busy street", "a traffic jam", "a queue of people"]
    out += [f"the letter {c}" for c in LETTERS]
    out += [f"the lowercase letter {c.lower()}" for c in LETTERS[::2]]
    out += [f"the number {d}" for d in DIGITS] + [f"the digit {i}" for i in range(10)]
    out += [f"a handwritten {d}" for d in DIGITS] + [f"the number {n}" for n in (10, 12, 21, 42, 100, 2024)]
    out += [f"a sign that says {w}" for w in WORDS_ON_SIGNS] + [f"the word {w}" for w in WORDS_ON_SIGNS]
    out += ["text", "a lot of text", "handwriting", "a handwritten note", "a typed letter", "a headline",
            "a price tag", "a barcode", "a qr code", "a license plate", "a calendar", "a clock face",
            "a keyboard with letters", "chinese characters", "japanese characters", "arabic script",
            "cyrillic letters", "greek letters", "roman numerals", "a mathematical equation", "musical notes",
            "a crossword puzzle", "a neon sign", "a street sign", "a road sign", "graffiti text on a wall"]
    out += [f"{with_article(s)} painting" for s in ART_STYLES] + [f"an image in the style of {s} art" for s in ART_STYLES]
    out += [with_article(m) for m in MEDIA] + [f"{with_article(m)} of a landscape" for m in MEDIA[::2]]
    out += [f"{with_article(m)} of {with_article(a)}" for m, a in every_nth(itertools.product(MEDIA[:22], ANIMALS), 40)]
    out += [f"{with_article(s)} {m}" for s, m in every_nth(itertools.product(ART_STYLES, MEDIA[:12]), 40)]
    out += [f"a photo with {light}" for light in LIGHTING]
    out += [f"a photo taken in {w}" for w in WEATHER] + [f"a landscape with {w}" for w in WEATHER[::2]]
    out += [f"a city street {t}" for t in TIMES] + [f"a landscape {t}" for t in TIMES]
    out += [f"a photo taken {t}" for t in TIMES]
    out += [f"{with_article(e)} face" for e in EMOTIONS] + [f"a person looking {e}" for e in EMOTIONS]
    out += [f"{with_article(e)} mood" for e in EMOTIONS[::2]] + [f"{with_article(e)} dog" for e in EMOTIONS[::3]]
    out += [f"{with_article(e)} child" for e in EMOTIONS[::3]]
    for n in range(1, 11):
        word = COUNT_WORDS[n]
        out += [f"{word} {single if n == 1 else plural}" for single, plural in list(GENERIC_COUNTS.items())[:12]]
    out += [f"{q} {plural}" for q in QUANTITY_PHRASES for plural in GENERIC_COUNTS.values()][::4]
    out += [f"{with_article(s)} {o}" for s, o in every_nth(itertools.product(SIZES, OBJECTS + ANIMALS), 60)]
    out += [f"{with_article(o)} {p}" for o, p in every_nth(itertools.product(OBJECTS, IMAGE_POSITIONS), 60)]
    out += [f"something {p}" for p in IMAGE_POSITIONS] + [f"a person {p}" for p in IMAGE_POSITIONS]
    out += PHOTO_PROPERTIES
    return out


def offensive(text: str) -> bool:
    """True when ``text`` matches the maintained profanity list of ``better_profanity`` (whole words, with its
    spelling variants). Its list is broad (it also lists words such as "kill", "fat" or "pot"); a text pool loses
    nothing it needs by leaving them out, and a report never shows a vulgar word as a head's or neuron's description.

    The same answer as ``profanity.contains_profanity(text)``, faster: each distinct word is checked once, and the
    whole text only when it holds the first word of one of the list's multi-word entries."""
    from better_profanity import profanity

    words = text.split()
    if any(_offensive_word(w) for w in words):
        return True
    return len(words) > 1 and not _MULTI_WORD_STARTS.isdisjoint(w.lower() for w in words) and \
        profanity.contains_profanity(text)


@functools.lru_cache(maxsize=None)
def _offensive_word(word: str) -> bool:
    from better_profanity import profanity

    return profanity.contains_profanity(word)


def _multi_word_starts() -> frozenset[str]:
    try:
        entries = (files("better_profanity") / "profanity_wordlist.txt").read_text(encoding="utf-8").splitlines()
    except (ModuleNotFoundError, FileNotFoundError):  # the generator then fails at its first offensive() call
        return frozenset()
    return frozenset(e.split()[0].lower() for e in entries if len(e.split()) > 1)


_MULTI_WORD_STARTS = _multi_word_starts()


def build_descriptions() -> list[str]:
    """All descriptions, deduplicated case-insensitively, in generation order, without offensive texts."""
    return [d for d in dedupe(shapes_world_descriptions() + general_descriptions()) if not offensive(d)]


def build_words(n_words: int = N_WORDS) -> list[str]:
    """The n_words most frequent alphabetic English words according to wordfreq (offline data), without the
    offensive ones."""
    import wordfreq

    words = [w for w in wordfreq.top_n_list("en", n_words * 2) if w.isascii() and w.isalpha() and not offensive(w)]
    if len(words) < n_words:
        raise RuntimeError(f"wordfreq gave only {len(words)} alphabetic words")
    return words[:n_words]


def dedupe(texts: Sequence[str]) -> list[str]:
    """Strip, drop blanks, and keep the first of case-insensitive duplicates."""
    seen: set[str] = set()
    out = []
    for text in texts:
        text = " ".join(text.split())
        if text and text.lower() not in seen:
            seen.add(text.lower())
            out.append(text)
    return out


def write_pool(texts: Sequence[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the shipped TextSpan text pools.")
    parser.add_argument("--out-dir", type=Path, default=POOL_DIR)
    parser.add_argument("--n-words", type=int, default=N_WORDS)
    args = parser.parse_args(argv)
    descriptions = build_descriptions()
    words = build_words(args.n_words)
    write_pool(descriptions, args.out_dir / "descriptions.txt")
    write_pool(words, args.out_dir / "words.txt")
    print(f"wrote {len(descriptions)} descriptions and {len(words)} words to {args.out_dir}")


if __name__ == "__main__":
    main()
