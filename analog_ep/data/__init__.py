"""Data sets: character-level text (language modelling) and scikit-learn digits (classification)."""
from analog_ep.data.digits import DigitsData, DigitsDataConfig
from analog_ep.data.text import CharCorpus, TextDataConfig, default_text

__all__ = ["CharCorpus", "TextDataConfig", "default_text", "DigitsData", "DigitsDataConfig"]
