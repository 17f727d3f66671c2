"""The patient's record, read for what matters to the image: ``RecordFacts``.

Today the record is a free-text note (:mod:`secondread.records.notes`, medspaCy); FHIR and other
areas add readers that produce the same ``RecordFacts``.
"""

from secondread.records.notes import (
    Fact,
    RecordFacts,
    extract_facts,
    extract_from_file,
    read_note,
)

__all__ = ["Fact", "RecordFacts", "extract_facts", "extract_from_file", "read_note"]
