"""How the built-in model reads a caption: the words it knows (and those that go with an unknown one), the word
order it was trained on, and where a caption places its shapes."""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z]+")

# Layout words -> where the shape's centre must lie, as (x0, y0, x1, y1) fractions of the side. The UNet reads
# them as extra input channels (one per mentioned shape), a direct path for position that cross-attention alone
# did not learn on this data.
_REGIONS = {
    "left": (0.0, 0.0, 0.4, 1.0),
    "right": (0.6, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.4),
    "bottom": (0.0, 0.6, 1.0, 1.0),
    "center": (0.35, 0.35, 0.65, 0.65),
}
_RELATIONS = {
    "above": ((0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)),
    "below": ((0.0, 0.5, 1.0, 1.0), (0.0, 0.0, 1.0, 0.5)),
    "left_of": ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)),
    "right_of": ((0.5, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 1.0)),
}


def parse_layout(text: str) -> tuple:
    """The regions of the first and second shape a caption places (None where it places none)."""
    words = WORD.findall(text.lower())
    if "above" in words:
        return _RELATIONS["above"]
    if "below" in words:
        return _RELATIONS["below"]
    if "of" in words and "left" in words:
        return _RELATIONS["left_of"]
    if "of" in words and "right" in words:
        return _RELATIONS["right_of"]
    for word in words:
        if word in _REGIONS:
            return _REGIONS[word], None
    return None, None


SHAPES = ("circle", "square", "triangle")
_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
_SIZES = ("small", "large")
_QUALIFIERS = (*_COLOURS, *_SIZES)  # a shape's own words before it
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
_PLACE_OF = {place.split()[-1]: place for place in PLACES}  # "left" -> "on the left"
# a region word after each of two shapes places one from the other: "a red circle on the left, a blue square on
# the right" is "a red circle to the left of a blue square"
_LINK_OF_PLACES = {("left", "right"): "to the left of", ("right", "left"): "to the right of",
                   ("top", "bottom"): "above", ("bottom", "top"): "below"}
LINKS = ("above", "below", "to the left of", "to the right of")  # the first shape from the second


def named_backgrounds(words: list[str], colours) -> list[str]:
    """The colours that a caption's words name as its background (the word right before "background")."""
    return [words[i - 1] for i, w in enumerate(words) if w == "background" and i and words[i - 1] in colours]


def read_caption(text: str) -> str:
    """A caption of one or two shapes in the word order the model was trained on, whatever order its words come
    in ("red circle, blue background, left" -> "a red circle on the left on a blue background"; "a white
    background with a red circle above a blue square" -> "a red circle above a blue square on a white
    background"); a caption already in a trained order, and one this reading cannot place (no colour for a shape,
    two positions for one shape, three shapes), stay as they are. A shape's own words are the colour and size
    right before it (one shape's size may come anywhere); the background's colour is the one right before
    "background"."""
    words = text.split()
    kinds = [j for j, w in enumerate(words) if w in SHAPES]
    if len(kinds) not in (1, 2):
        return text
    nouns = []
    for n, k in enumerate(kinds):
        own = []
        for word in reversed(words[kinds[n - 1] + 1 if n else 0:k]):
            if word not in _QUALIFIERS:
                break
            own.insert(0, word)
        colours = [w for w in own if w in _COLOURS]
        sizes = [w for w in (own if len(kinds) == 2 else words) if w in _SIZES]
        if len(colours) != 1 or len(sizes) > 1:
            return text
        nouns.append(" ".join([*sizes, colours[0], words[k]]))
    backgrounds = named_backgrounds(words, _COLOURS)
    if len(backgrounds) > 1:
        return text
    on_background = f" on a {backgrounds[0]} background" if backgrounds else ""
    places = [w for w in words if w in _PLACE_OF]
    if len(kinds) == 1:
        if len(places) > 1:
            return text
        article = "an" if nouns[0][0] in "aeiou" else "a"
        caption = f"{article} {nouns[0]}{' ' + _PLACE_OF[places[0]] if places else ''}"
        trained = {caption + on_background}
        if backgrounds:
            trained.add(f"a {backgrounds[0]} background with {caption}")
        return text if text in trained else caption + on_background
    before, between, after = words[:kinds[0]], words[kinds[0] + 1:kinds[1]], words[kinds[1] + 1:]
    placed_between, placed_after = [w for w in between if w in _PLACE_OF], [w for w in after if w in _PLACE_OF]
    if {"above", "below", "of"} & set(before + after) or any(w in _PLACE_OF for w in before):
        return text  # a relation or a position before the first shape or after the second: not read
    if {"above", "below"} & set(between):
        if {"above", "below"} <= set(between) or placed_between or placed_after:
            return text
        link = "above" if "above" in between else "below"
    elif "of" in between:
        if len(placed_between) != 1 or placed_between[0] not in ("left", "right") or placed_after:
            return text
        link = f"to the {placed_between[0]} of"
    elif placed_between or placed_after:  # a position for each: where the first lies from the second
        link = _LINK_OF_PLACES.get((placed_between[0], placed_after[0])) \
            if len(placed_between) == len(placed_after) == 1 else None
        if link is None:
            return text
    else:
        link = None  # none: the model chooses it (`choose_left_out`)
    return f"a {nouns[0]}{' ' + link if link else ''} a {nouns[1]}{on_background}"


def ignored_warning(words: list[str]) -> list[str]:
    """The warning for the words a caption lost: those the model does not know, and the known ones that went with
    them (the colour of a shape it does not draw)."""
    if not words:
        return []
    unknown = [w for w in words if w not in _QUALIFIERS]
    said = f"ignored words not in the built-in model's vocabulary: {', '.join(unknown)}"
    if len(unknown) < len(words):
        said += f" (and the words that only went with them: {', '.join(w for w in words if w not in unknown)})"
    return [said]


def split_known_words(prompt: str, vocabulary: set[str]) -> tuple[str, list[str]]:
    """The prompt reduced to words the model knows, and the words it dropped (in order, without repeats). A known
    word that only qualifies an unknown one goes with it: the colour and size of a shape the model does not draw
    ("a red hexagon": red), and the background of a colour it does not know ("on a grey background": the whole
    phrase), so that the model never reads a colour without its shape or "on a background" without its colour (it
    drew such colours as the background, and another background than the one it was then given)."""
    words = WORD.findall(prompt.lower())
    kept = [w in vocabulary for w in words]
    for i, word in enumerate(words):
        if word == "background" and (i == 0 or not kept[i - 1] and words[i - 1] not in vocabulary):
            kept[i] = False  # "on a grey background", "a grey background with": the phrase goes
            j = i - 1
            while j >= 0 and words[j] not in vocabulary:
                j -= 1
            for k in range(j, max(j - 2, -1), -1):
                if words[k] in ("on", "a", "an", "the"):
                    kept[k] = False
            if i + 1 < len(words) and words[i + 1] == "with":
                kept[i + 1] = False
    i = 0
    while i < len(words):  # a run of qualifiers and unknown words: before a shape, its unknown words go; before
        end = i              # anything else (an unknown noun: "a red hexagon"), the whole run and its article
        while end < len(words) and (words[end] in _QUALIFIERS or words[end] not in vocabulary) \
                and words[end] not in ("and", "with"):
            end += 1
        run = range(i, end)
        if end > i and any(words[j] not in vocabulary for j in run) and words[end:end + 1] != ["background"] \
                and not (end < len(words) and words[end] in SHAPES):
            for j in run:
                kept[j] = False
            if i and words[i - 1] in ("a", "an", "the"):
                kept[i - 1] = False
        i = max(end, i + 1)
    if sum(w in SHAPES for w, keep in zip(words, kept) if keep) < 2:  # a relation to a shape that is gone
        for i, word in enumerate(words):
            if word in ("above", "below") or word == "of" and words[i - 2:i - 1] == ["the"]:
                for k in range(i - 3 if word == "of" else i, i + 1):
                    kept[k] = False
    ends = [j for j, keep in enumerate(kept) if keep]
    while ends and words[ends[-1]] in ("a", "an", "the", "with", "and", "on", "to", "of", "at", "in"):
        kept[ends.pop()] = False  # "... on a blue background with": what it led to is gone
    dropped = [w for w, keep in zip(words, kept) if not keep and (w not in vocabulary or w in _QUALIFIERS)]
    return " ".join(w for w, keep in zip(words, kept) if keep), list(dict.fromkeys(dropped))
