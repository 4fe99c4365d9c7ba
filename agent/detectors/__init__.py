"""Detectors for identifying text: recognisers, name lexicons and the imaging vocabulary."""
