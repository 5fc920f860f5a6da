"""Contrast datasets: paired clean/corrupt prompts with answers and named positions."""

from mechlens.data.choices import ChoiceDataset, choices, movie_review_choices, polite_casual
from mechlens.data.contrast import ContrastDataset, find_token_position, single_token
from mechlens.data.ioi import ioi
from mechlens.data.neutral import neutral_texts
from mechlens.data.sentiment import toy_mood_story, toy_movie_review
from mechlens.data.sst import sst

__all__ = [
    "ChoiceDataset",
    "ContrastDataset",
    "choices",
    "movie_review_choices",
    "polite_casual",
    "find_token_position",
    "ioi",
    "neutral_texts",
    "single_token",
    "sst",
    "toy_mood_story",
    "toy_movie_review",
]
