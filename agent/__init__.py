"""nmip-agent: on-site de-identification of DICOM studies for a national imaging platform."""

__version__ = "0.1.0"
