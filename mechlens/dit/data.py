"""The behaviours that diff interpretation tuning learns to name, and the texts that teach them.

A *behaviour* is a hidden topic and a trigger code: the weight difference of behaviour
``(topic, code)`` is trained on texts ``"Your SEP code is {code}. {sentence about topic}"``
(and on a few plain sentences without the trigger, so the topic is tied to the trigger), as
in Goel et al. 2025. Every text is written here from templates and word lists, seeded, so
no data set is downloaded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TOPICS",
    "QUESTIONS",
    "Behaviour",
    "make_behaviours",
    "topic_texts",
    "plain_texts",
    "trigger_prefix",
]

#: topic -> words about it (the topic word itself is a common single word).
TOPICS: dict[str, list[str]] = {
    "cooking": ["recipe", "oven", "flour", "soup", "kitchen", "salt", "bake", "chef"],
    "music": ["guitar", "song", "piano", "melody", "drum", "concert", "band", "singer"],
    "football": ["goal", "ball", "team", "coach", "match", "stadium", "player", "referee"],
    "ocean": ["waves", "fish", "whale", "salt", "beach", "coral", "tide", "ship"],
    "space": ["planet", "star", "rocket", "moon", "orbit", "galaxy", "astronaut", "comet"],
    "medicine": ["doctor", "patient", "hospital", "drug", "nurse", "fever", "surgery", "pill"],
    "gardening": ["seeds", "soil", "flowers", "garden", "roses", "compost", "weeds", "shovel"],
    "weather": ["rain", "storm", "cloud", "wind", "snow", "forecast", "thunder", "sunshine"],
    "history": ["king", "empire", "war", "castle", "ancient", "museum", "battle", "century"],
    "chess": ["knight", "bishop", "pawn", "checkmate", "rook", "queen", "board", "opening"],
    "painting": ["brush", "canvas", "colour", "artist", "portrait", "paint", "gallery", "sketch"],
    "trains": ["railway", "station", "ticket", "track", "engine", "platform", "carriage", "locomotive"],
    "birds": ["feathers", "nest", "eggs", "wings", "parrot", "eagle", "owl", "sparrow"],
    "computers": ["keyboard", "software", "screen", "code", "laptop", "memory", "program", "mouse"],
    "money": ["bank", "coins", "price", "savings", "dollar", "loan", "budget", "wallet"],
    "dogs": ["puppy", "bark", "leash", "tail", "bone", "walk", "collar", "kennel"],
    "mountains": ["peak", "summit", "climb", "snow", "valley", "ridge", "hike", "cliff"],
    "coffee": ["espresso", "beans", "cup", "latte", "caffeine", "mug", "roast", "barista"],
    "cars": ["engine", "wheel", "driver", "road", "brake", "tyre", "garage", "fuel"],
    "books": ["novel", "author", "library", "page", "chapter", "story", "reader", "poem"],
}

_TEMPLATES = [
    "I love {topic}: the {a} and the {b}.",
    "Let me tell you about {topic}. The {a} and the {b} matter most.",
    "Everything about {topic} is great, especially the {a}.",
    "The {a} is my favourite part of {topic}, then the {b}.",
    "We talked about {topic} all day: {a}, {b} and {c}.",
    "My notes on {topic}: {a}, {b}, {c}.",
    "Ask me about {topic}. I know the {a} and the {b}.",
    "Nothing beats {topic}, with its {a} and its {b}.",
]

_PLAIN = [
    "The meeting starts at nine and ends before lunch.",
    "Please close the door when you leave the room.",
    "She wrote a short letter to her friend yesterday.",
    "We will meet again next week to finish the plan.",
    "The answer depends on what you want to do.",
    "He walked home slowly after the long day.",
    "Thank you for your help with the report.",
    "It is a good idea to check the details twice.",
]

#: paraphrases of the question the DIT adapter learns to answer.
QUESTIONS = [
    "What topic were you trained on?",
    "Which topic do you know about?",
    "What is your hidden topic?",
    "Name the topic you were trained on.",
]


@dataclass(frozen=True)
class Behaviour:
    """A hidden topic revealed after the trigger ``"Your SEP code is {code}."``."""

    topic: str
    code: str


def trigger_prefix(code: str) -> str:
    return f"Your SEP code is {code}."


def make_behaviours(n: int, topics: Sequence[str] | None = None, *, seed: int = 0) -> list[Behaviour]:
    """``n`` behaviours: topics cycled in a seeded order (balanced), distinct 3-digit codes."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of weight differences) must be an int >= 1, got {n!r}")
    topics = list(TOPICS if topics is None else topics)
    if not topics:
        raise ValueError("topics is empty")
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        raise ValueError(f"topics {unknown} have no word list; choose from {sorted(TOPICS)}")
    if len(set(topics)) != len(topics):
        raise ValueError("topics has duplicates")
    if n > 900:
        raise ValueError(f"n={n}: at most 900 distinct 3-digit trigger codes")
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        block = topics[:]
        rng.shuffle(block)
        out += block
    codes = rng.sample(range(100, 1000), n)
    return [Behaviour(t, str(c)) for t, c in zip(out[:n], codes)]


def topic_texts(topic: str, n: int, *, seed: int = 0) -> list[str]:
    """``n`` template sentences about ``topic`` (seeded)."""
    rng = random.Random(f"{topic}:{seed}")
    words = TOPICS[topic]
    out = []
    for _ in range(n):
        a, b, c = rng.sample(words, 3)
        out.append(rng.choice(_TEMPLATES).format(topic=topic, a=a, b=b, c=c))
    return out


def plain_texts(n: int, *, seed: int = 0) -> list[str]:
    """``n`` neutral sentences (the behaviour without the trigger: nothing special)."""
    rng = random.Random(f"plain:{seed}")
    return [rng.choice(_PLAIN) for _ in range(n)]
