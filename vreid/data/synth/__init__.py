"""The synthetic city: the embedded default dataset (DESIGN.md, The embedded default)."""

from vreid.data.synth.generate import generate, is_complete, plan
from vreid.data.synth.presets import PRESETS, SynthPreset, get_preset

__all__ = ["generate", "is_complete", "plan", "PRESETS", "SynthPreset", "get_preset"]
