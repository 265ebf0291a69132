"""A small hand-written hypernym table for the "level 1 is more generic than level 2" check.

Why a table: the check has to run offline, be deterministic and be explainable in a reject ledger.
WordNet would be the general answer but ships in no installable package here; the captions this
project turns into hierarchies (COCO-like scenes) name a few hundred everyday heads, so a table
of categories and their members, written for this project, covers most of them. A head the table
does not know is reported as unknown (a counted reject reason), never guessed.

`CATEGORIES` maps a category (a possible level 1) to member nouns (singular); `BROADER` lifts a
category to wider ones (transitively), so "vehicle" is also "transportation" and "object".
Two-word members are written with `_` ("teddy_bear") and looked up before their last word.
"""

from __future__ import annotations

from functools import cache

CATEGORIES: dict[str, str] = {
    "person": """man woman boy girl child kid baby toddler infant person people guy lady gentleman teenager teen
        youngster adult player skier surfer skateboarder snowboarder rider biker cyclist driver passenger
        family couple crowd team chef cook baker worker officer policeman soldier tourist student friend father
        mother dad mom son daughter brother sister bride groom vendor farmer cowboy jockey athlete fan spectator
        businessman waiter waitress customer audience pedestrian individual male female batter pitcher catcher
        umpire goalie referee skater swimmer runner hiker traveler musician artist photographer doctor nurse
        pilot captain sailor fisherman clown parent grandmother grandfather daughter husband wife boyfriend
        girlfriend someone baseman shortstop outfielder quarterback boxer dancer singer windsurfer kitesurfer""",
    "animal": """dog puppy cat kitten horse pony foal sheep lamb cow cattle calf bull ox elephant bear zebra
        giraffe bird duck goose seagull gull pigeon parrot owl eagle hawk swan chicken hen rooster deer goat pig
        monkey lion tiger fish squirrel rabbit bunny herd flock animal pet polar_bear grizzly_bear pup
        livestock heifer donkey mule camel kangaroo fox wolf turkey crow sparrow pelican flamingo heron hippo
        hippopotamus rhino rhinoceros""",
    "vehicle": """car truck bus train motorcycle bike bicycle scooter van taxi cab jeep tractor trolley tram suv
        vehicle motorbike moped pickup limousine ambulance firetruck fire_truck locomotive wagon cart carriage
        minivan sedan convertible trailer double_decker subway traffic""",
    "aircraft": "airplane plane jet airliner helicopter aircraft glider jetliner",
    "boat": "boat ship sailboat kayak canoe yacht ferry raft barge vessel tugboat speedboat",
    "food": """pizza sandwich cake donut doughnut hot_dog salad meal dish bread dessert breakfast lunch dinner
        burger hamburger fries soup pasta rice meat cheese egg sushi pie cookie sauce snack food slice cupcake
        muffin bagel taco burrito steak chicken noodle spaghetti pastry toast cereal sausage bacon pancake waffle
        omelet chocolate ice_cream salmon""",
    "fruit": "banana apple orange lemon lime grape strawberry pear peach melon watermelon pineapple berry cherry fruit",
    "vegetable": "broccoli carrot tomato onion pepper potato lettuce cucumber cabbage spinach corn mushroom vegetable",
    "furniture": "chair couch sofa bed table bench desk shelf bookshelf cabinet dresser stool furniture armchair ottoman",
    "room": """kitchen bathroom bedroom living_room office dining_room room restroom lobby hallway kitchenette
        classroom""",
    "building": """house church tower clock_tower building home skyscraper barn station hotel restaurant store shop
        castle cathedral cabin hut apartment garage warehouse""",
    "place": """street road city town beach field park airport runway intersection market parking_lot yard garden
        farm zoo court tennis_court sidewalk highway bridge platform track area pasture meadow shore harbor
        dock pier downtown village""",
    "nature": "ocean lake river sea water mountain hill forest grass snow sky sunset wave cloud",
    "sign": "stop_sign street_sign sign billboard traffic_light signal banner poster",
    "electronics": """laptop computer phone cell_phone cellphone smartphone tv television monitor keyboard remote
        screen camera tablet device mouse computer_mouse""",
    "appliance": "refrigerator fridge oven microwave stove toaster dishwasher appliance blender",
    "fixture": """sink toilet bathtub tub shower faucet urinal hydrant fire_hydrant parking_meter meter lamp streetlight
        lamppost fireplace mirror""",
    "tool": "scissors toothbrush hair_dryer hair_drier tool hammer",
    "tableware": """plate bowl cup mug glass bottle fork knife spoon pan pot wine_glass tray cutting_board dish
        utensil silverware pitcher teapot kettle place_setting napkin""",
    "equipment": """surfboard skateboard snowboard ski kite frisbee ball tennis_racket racket racquet bat
        baseball_bat glove baseball_glove helmet paddle pole parachute parasail sail""",
    "clothing": "tie shirt hat jacket dress suit coat uniform shoe sneaker boot cap sweater jean pant short outfit vest",
    "accessory": "umbrella backpack handbag purse bag suitcase luggage glasses sunglasses watch scarf",
    "plant": "tree flower plant bush shrub palm",
    "container": "vase basket box bucket crate jar container",
    "toy": "teddy_bear stuffed_animal doll toy teddy",
    "clock": "clock",
    "book": "book magazine newspaper",
    "sport": "tennis baseball soccer football skiing surfing snowboarding skateboarding sport game match",
    "art": "statue sculpture painting picture photo photograph artwork drawing mural",
}

BROADER: dict[str, tuple[str, ...]] = {
    "person": ("people", "human"),
    "animal": ("creature",),
    "vehicle": ("transportation", "transport", "object"),
    "aircraft": ("transportation", "transport", "vehicle", "object"),
    "boat": ("transportation", "transport", "vehicle", "watercraft", "object"),
    "fruit": ("food", "produce"),
    "vegetable": ("food", "produce"),
    "furniture": ("object",),
    "room": ("place", "area", "space"),
    "building": ("structure", "place"),
    "place": ("area", "location", "scene"),
    "nature": ("outdoors", "scene"),
    "sign": ("object",),
    "electronics": ("device", "object", "technology"),
    "appliance": ("device", "object"),
    "fixture": ("object",),
    "tableware": ("object", "kitchenware", "dishware", "utensil"),
    "equipment": ("sports equipment", "gear", "object"),
    "clothing": ("apparel", "clothes", "garment"),
    "accessory": ("object",),
    "plant": ("nature", "vegetation"),
    "toy": ("object",),
    "tool": ("object",),
    "container": ("object",),
    "clock": ("object", "device"),
    "book": ("object", "reading material"),
    "sport": ("activity", "game"),
    "art": ("image", "object"),
}

# Plurals the suffix rules below do not undo.
IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "people", "knives": "knife",
             "mice": "mouse", "geese": "goose", "teeth": "tooth", "feet": "foot", "leaves": "leaf",
             "shelves": "shelf", "loaves": "loaf", "skis": "ski", "glasses": "glasses", "sunglasses": "sunglasses",
             "cattle": "cattle", "fries": "fries", "jeans": "jean", "pants": "pant", "shorts": "short"}


def _members() -> dict[str, frozenset[str]]:
    """Member phrase → every category it falls under (directly or through BROADER)."""
    found: dict[str, set[str]] = {}
    for category, text in CATEGORIES.items():
        for member in _phrases(text):
            found.setdefault(member, set()).add(category)
    closed: dict[str, frozenset[str]] = {}
    for member, categories in found.items():
        todo, seen = list(categories), set()
        while todo:
            category = todo.pop()
            if category not in seen:
                seen.add(category)
                todo.extend(BROADER.get(category, ()))
        closed[member] = frozenset(seen)
    return closed


def _phrases(text: str) -> list[str]:
    """Members of a table entry; `_` joins the words of a two-word member ("teddy_bear")."""
    return [token.replace("_", " ") for token in text.split()]


@cache
def table() -> dict[str, frozenset[str]]:
    return _members()


def forms(word: str) -> tuple[str, ...]:
    """The word and the singulars it may be a plural of ("buses" → bus, buse; "knives" → knife, …)."""
    found = [word, IRREGULAR.get(word, word)]
    for suffix, repl in (("ies", "y"), ("ves", "fe"), ("ves", "f"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 1 and not word.endswith("ss"):
            found.append(word[: -len(suffix)] + repl)
    return tuple(dict.fromkeys(found))


def singular(word: str) -> str:
    """The form of `word` the table knows (as a member or a category), else its plainest singular guess."""
    candidates = forms(word)
    known, names = table(), category_names()
    return next((f for f in candidates if f in known or f in names), candidates[-1])


@cache
def category_names() -> frozenset[str]:
    """Every category and broader term ("electronics", "sports equipment")."""
    return frozenset(CATEGORIES) | frozenset(w for wider in BROADER.values() for w in wider)


def lookup(word_list: list[str]) -> tuple[str, frozenset[str]] | None:
    """The head of a noun phrase (lower-case words) that the table knows, with its categories.

    The last two words first ("teddy bear", not "bear"), then single words from the last one
    back ("group of people" → people; "man riding" → man): English noun phrases end in their head.
    """
    known = table()
    if len(word_list) >= 2:
        for last in forms(word_list[-1]):
            pair = f"{word_list[-2]} {last}"
            if pair in known:
                return pair, known[pair]
    for word in reversed(word_list):
        for form in forms(word):
            if form in known:
                return form, known[form]
    return None


def direct_categories(member: str) -> list[str]:
    """The table's own categories of a member (not the broader ones), in table order."""
    return [category for category, text in CATEGORIES.items() if member in _phrases(text)]


def absent_categories(word_list: list[str], named: set[str]) -> list[str]:
    """The table's categories (in table order) that the words do not name, so none is true of the image.

    A category is out when a word or two-word phrase of `word_list` is one of its members, or when
    it, or a term broader than it, is in `named` (the categories those members fall under, plus
    the texts the caller passes, such as "creature" or "food"): what is left is a sibling of every
    named category, never an ancestor or a descendant of one.
    """
    known, out = table(), set(named)
    for i, word in enumerate(word_list):
        for form in forms(word):
            out |= known.get(form, frozenset())
            if i > 0:
                out |= known.get(f"{word_list[i - 1]} {form}", frozenset())
    return [c for c in CATEGORIES if c not in out and not out.intersection(BROADER.get(c, ()))]
