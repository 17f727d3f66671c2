"""secondread: an open-source second reader for medical images.

Decision support, never a diagnosis. See DEVELOPERS.md and ../shared/DESIGN.md for the flow:
io -> preprocess -> models -> explain -> records -> suggest -> report.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "secondread is decision support, not a diagnosis. Its output is a suggestion for a qualified "
    "clinician to review against the images and the patient; it is not a medical device."
)
