"""A small hand-written hypernym table for the "level 1 is more generic than level 2" check.

Why a table: the check has to run offline, be deterministic and be explainable in a reject ledger.
WordNet would be the general answer but ships in no installable package here; the captions this
project turns into hierarchies (COCO-like scenes) name a few hundred everyday heads, so a table
of categories and their members, written for this project, covers most of them. A head the table
does not know is reported as unknown (a counted reject reason), never guessed.

`CATEGORIES` maps a category (a possible level 1) to member nouns (singular); `KINDS` adds the
kinds between a member and its category ("dog": canine, mammal, pet); `BROADER` lifts a category
or kind to wider ones (transitively), so "vehicle" is also "transportation" and "object"; `ROOTS`
adds the widest terms ("organism", "physical entity"), which many categories share. Two-word
members are written with `_` ("teddy_bear") and looked up before their last word.
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
    # kinds (KINDS): each lifts to a table category
    "adult": ("person",), "man": ("person",), "woman": ("person",), "child": ("person",), "young person": ("person",),
    "athlete": ("person",), "worker": ("person",), "group of people": ("people",),
    "mammal": ("animal",), "pet": ("animal",), "farm animal": ("animal",), "wild animal": ("animal",),
    "bird": ("animal",), "canine": ("mammal",), "hoofed mammal": ("mammal",),
    "motor vehicle": ("vehicle",), "wheeled vehicle": ("vehicle",), "public transport": ("transportation",),
    "rail vehicle": ("vehicle",), "baked goods": ("food",), "fast food": ("food",), "sweet food": ("food",),
    "seat": ("furniture",), "kitchen appliance": ("appliance",), "plumbing fixture": ("fixture",),
    "light fixture": ("fixture",), "display": ("electronics",), "computer": ("electronics",), "cutlery": ("tableware",),
    "drinkware": ("tableware",), "crockery": ("tableware",), "headwear": ("clothing",), "footwear": ("clothing",),
    "bag": ("accessory",), "eyewear": ("accessory",), "woody plant": ("plant",), "body of water": ("nature",),
    "landform": ("nature",), "dwelling": ("building",), "establishment": ("building",), "road": ("place",),
    "sports field": ("place",), "waterfront": ("place", "nature"), "traffic sign": ("sign",), "stuffed toy": ("toy",),
    "winter sport": ("sport",), "water sport": ("sport",), "ball game": ("sport",),
}

# Kinds between a member and its table category ("dog" is a canine, a mammal and a pet before it is
# an animal): more breadths of level 1 to draw from, many of them two words long, each lifted to a
# category in BROADER. Members are the table's own (singular, `_` joining two words). No kind has a
# single everyday member: over "feline" the ordering model writes "cat" as the sibling of "cat".
KINDS: dict[str, str] = {
    "adult": "man woman guy lady gentleman businessman father mother dad mom husband wife bride groom",
    "man": "guy gentleman father dad husband groom boyfriend businessman policeman grandfather",
    "woman": "lady mother mom wife bride girlfriend waitress grandmother",
    "child": "boy girl kid baby toddler infant youngster son daughter",
    "young person": "teenager teen youngster boy girl kid child",
    "athlete": """player skier surfer skateboarder snowboarder batter pitcher catcher goalie skater swimmer
        runner boxer windsurfer kitesurfer baseman shortstop outfielder quarterback jockey cyclist""",
    "worker": """chef cook baker officer policeman soldier vendor farmer waiter waitress doctor nurse pilot
        captain sailor fisherman photographer umpire referee""",
    "group of people": "family couple crowd team audience",
    "mammal": """dog puppy cat kitten horse pony foal sheep lamb cow cattle calf bull ox elephant bear zebra giraffe
        deer goat pig monkey lion tiger squirrel rabbit bunny polar_bear grizzly_bear pup heifer donkey mule camel
        kangaroo fox wolf hippo hippopotamus rhino rhinoceros""",
    "pet": "dog puppy pup cat kitten bunny rabbit parrot",
    "farm animal": "sheep lamb cow cattle calf bull ox goat pig horse pony foal heifer donkey mule chicken hen rooster livestock",
    "wild animal": """elephant bear zebra giraffe deer monkey lion tiger fox wolf kangaroo hippo hippopotamus rhino
        rhinoceros polar_bear grizzly_bear squirrel""",
    "bird": "duck goose seagull gull pigeon parrot owl eagle hawk swan chicken hen rooster turkey crow sparrow pelican flamingo heron",
    "canine": "dog puppy pup wolf fox",
    "hoofed mammal": "horse pony foal zebra giraffe deer cow cattle calf bull ox sheep lamb goat pig camel heifer donkey mule",
    "motor vehicle": """car truck bus motorcycle van taxi cab jeep tractor suv motorbike moped pickup limousine ambulance
        firetruck fire_truck minivan sedan convertible double_decker""",
    "wheeled vehicle": "bike bicycle wagon cart carriage trailer scooter",
    "public transport": "bus train tram trolley subway taxi cab ferry",
    "rail vehicle": "train locomotive tram trolley subway",
    "baked goods": "bread cake donut doughnut muffin bagel cookie pastry pie cupcake toast",
    "fast food": "pizza hot_dog burger hamburger fries sandwich taco burrito",
    "sweet food": "cake donut doughnut cookie pie cupcake ice_cream chocolate pastry muffin dessert",
    "seat": "chair couch sofa bench stool armchair ottoman",
    "kitchen appliance": "refrigerator fridge oven microwave stove toaster dishwasher blender",
    "plumbing fixture": "sink toilet bathtub tub shower faucet urinal",
    "light fixture": "lamp streetlight lamppost",
    "display": "tv television monitor screen",
    "computer": "laptop tablet",
    "cutlery": "fork knife spoon silverware",
    "drinkware": "cup mug glass wine_glass",
    "crockery": "plate bowl teapot",
    "headwear": "hat cap helmet",
    "footwear": "shoe sneaker boot",
    "bag": "backpack handbag purse suitcase luggage",
    "eyewear": "glasses sunglasses",
    "woody plant": "tree bush shrub palm",
    "body of water": "ocean lake river sea",
    "landform": "mountain hill",
    "dwelling": "house home cabin hut apartment",
    "establishment": "store shop market restaurant hotel",
    "road": "street highway intersection",
    "sports field": "court tennis_court field pitch track",
    "waterfront": "beach shore harbor dock pier",
    "traffic sign": "stop_sign street_sign",
    "stuffed toy": "teddy_bear stuffed_animal teddy",
    "winter sport": "skiing snowboarding",
    "water sport": "surfing",
    "ball game": "tennis baseball soccer football",
}

# The widest terms above a category. Two categories may share them (a person and an animal are both
# organisms), so `absent_categories` reads them only for what the caller names, never to rule out
# a sibling.
ROOTS: dict[str, tuple[str, ...]] = {
    "person": ("human being", "organism", "living thing", "being"),
    "animal": ("organism", "living thing", "fauna", "being"),
    "plant": ("organism", "living thing", "flora"),
    "food": ("foodstuff", "nourishment", "matter", "substance"),
    "object": ("physical object", "thing", "item", "artifact", "physical entity", "entity"),
    "place": ("physical entity", "entity", "region", "setting"),
    "nature": ("natural world", "environment", "physical entity"),
    "activity": ("act", "pursuit", "leisure", "recreation"),
    "image": ("representation", "visual", "creation"),
    "organism": ("physical entity", "entity"),
}

# Plurals the suffix rules below do not undo.
IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "people", "knives": "knife",
             "mice": "mouse", "geese": "goose", "teeth": "tooth", "feet": "foot", "leaves": "leaf",
             "shelves": "shelf", "loaves": "loaf", "skis": "ski", "glasses": "glasses", "sunglasses": "sunglasses",
             "cattle": "cattle", "fries": "fries", "jeans": "jean", "pants": "pant", "shorts": "short"}


def _members() -> dict[str, frozenset[str]]:
    """Member phrase → every category it falls under (directly, as a kind, or through `ancestors`)."""
    found: dict[str, set[str]] = {}
    for category, text in [*CATEGORIES.items(), *KINDS.items()]:
        for member in _phrases(text):
            found.setdefault(member, set()).add(category)
    return {member: frozenset(categories).union(*(ancestors(c) for c in categories))
            for member, categories in found.items()}


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
    wider = [*BROADER.values(), *ROOTS.values()]
    return frozenset(CATEGORIES) | frozenset(KINDS) | frozenset(w for terms in wider for w in terms)


# Words after which a noun phrase's head has been named: "a person sitting *on* a bench".
POSTMODIFIERS = frozenset({"on", "in", "at", "with", "near", "by", "under", "over", "behind", "beside", "next",
                           "inside", "outside", "from", "into", "onto", "through", "across", "along", "around",
                           "against", "above", "below", "beneath", "for", "to", "toward", "towards", "while",
                           "during", "between", "that", "who", "which"})


def lookup(word_list: list[str]) -> tuple[str, frozenset[str]] | None:
    """The head of a noun phrase (lower-case words) that the table knows, with its categories.

    Looked for first in the words before the phrase's post-modifier — a preposition or relative
    pronoun, or a participle with an object that follows a known noun — so "a person sitting on a
    bench" and "woman eating food" are about a person and a woman, not a bench or food (the last
    known noun was taken: a negative true of the image slipped past `relation`); then in the
    whole phrase.
    """
    before = _before_postmodifier(word_list)
    return _head(before) or (_head(word_list) if len(before) < len(word_list) else None)


def _before_postmodifier(word_list: list[str]) -> list[str]:
    """The words before the first post-modifier; an -ing word counts only when a known noun comes
    before it and words after it ("man riding a horse", but "horse riding", "kitchen ceiling")."""
    for i, word in enumerate(word_list[1:], start=1):
        if word in POSTMODIFIERS or (word.endswith("ing") and i < len(word_list) - 1 and _head(word_list[:i])):
            return word_list[:i]
    return word_list


def _head(word_list: list[str]) -> tuple[str, frozenset[str]] | None:
    """The last two words first ("teddy bear", not "bear"), then single words from the last one
    back ("group of people" → people; "man riding" → man): English noun phrases end in their head."""
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


def relation(text: list[str], other: list[str]) -> str | None:
    """How the table relates the head of `text` to the head of `other` (lower-case words): the
    "same" head ("dogs" / "a large dog"), "above" it ("person" / "man"), "below" it ("woman" /
    "people"), or None (unrelated, or a head the table does not know)."""
    mine, theirs = lookup(text), lookup(other)
    if mine is None or theirs is None:
        return None
    (head, wider), (other_head, other_wider) = mine, theirs
    if head == other_head:
        return "same"
    if head in other_wider:
        return "above"
    return "below" if other_head in wider else None


def direct_categories(member: str) -> list[str]:
    """The table's own categories of a member (not the broader ones), in table order."""
    return [category for category, text in CATEGORIES.items() if member in _phrases(text)]


@cache
def ancestors(category: str) -> frozenset[str]:
    """Every term wider than a category or kind (BROADER and ROOTS, transitively)."""
    todo, seen = [*BROADER.get(category, ()), *ROOTS.get(category, ())], set()
    while todo:
        term = todo.pop()
        if term not in seen:
            seen.add(term)
            todo.extend([*BROADER.get(term, ()), *ROOTS.get(term, ())])
    return frozenset(seen)


def absent_categories(word_list: list[str], named: set[str]) -> list[str]:
    """The table's categories and kinds (in table order) that the words do not name, so none is
    true of the image.

    A category is out when a word or two-word phrase of `word_list` is one of its members, or when
    it, or a term directly broader than it, is among the categories those members fall under; and
    when it or any term above it is in `named` (texts the caller passes, such as "organism" or
    "food"): what is left is a sibling of every named category, never an ancestor or a descendant
    of one.
    """
    known, out = table(), set(named)
    for i, word in enumerate(word_list):
        for form in forms(word):
            out |= known.get(form, frozenset())
            if i > 0:
                out |= known.get(f"{word_list[i - 1]} {form}", frozenset())
    return [c for c in [*CATEGORIES, *KINDS] if c not in out and not out.intersection(BROADER.get(c, ()))
            and not named.intersection(ancestors(c))]


@cache
def category_sizes() -> dict[str, int]:
    """How many table members fall under each category, kind or root: the smaller, the more specific."""
    sizes: dict[str, int] = {}
    for categories in table().values():
        for category in categories:
            sizes[category] = sizes.get(category, 0) + 1
    return sizes
