"""Steps composed into chains: `Respond() >> CritiqueRevise(constitution, rounds=4)`."""

from charter.steps.base import Chain, Step, StepContext
from charter.steps.sl import CritiqueRevise, Respond

__all__ = ["Chain", "CritiqueRevise", "Respond", "Step", "StepContext"]
