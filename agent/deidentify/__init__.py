"""De-identification: profiles compiled from deid recipes, applied with keyed pseudonyms."""

from agent.deidentify.apply import Change, DeidentifiedInstance, Deidentifier, Refused
from agent.deidentify.profile import Profile, load as load_profile

__all__ = ["Change", "DeidentifiedInstance", "Deidentifier", "Profile", "Refused", "load_profile"]
