"""Facts from a free-text clinical note, found with medspaCy rules.

Why medspaCy: the words that matter for an image ("pneumonia", "30 pack-year smoker") are easy to
find; what is hard is their context ("no pneumonia", "mother had lung cancer", "return if fever
develops"). medspaCy's ConText and sectionizer answer that with published, inspectable rules, and it
runs offline on a blank English model.

The pipeline is a chain of small medspaCy components, built once per body area:

    tokenizer -> PyRuSH sentences -> TargetMatcher (rules/<area>.json) -> sectionizer -> ConText

The vocabulary lives in data files, not code: ``rules/<area>.json`` holds medspaCy ``TargetRule``
JSON (label = category, ``metadata.concept`` = normalised concept), ``rules/context.json`` holds
``ConTextRule`` JSON added to medspaCy's default ConText rules, and ``rules/sections.json`` says which
sections imply which ConText attribute (a fact under FAMILY HISTORY is about the family).

Categories (the TargetRule label):
    FINDING      something the image can show (pneumonia, consolidation, effusion, nodule, ...)
    SYMPTOM      what the patient reports or the exam measures (fever, cough, dyspnoea, hypoxia, ...)
    RISK_FACTOR  exposures and states that raise the prior (smoking, immunosuppression, recent stay)
    CONDITION    a diagnosed disease; whether it is old is the ``historical`` flag, not the category
    EXCLUDE      longer phrases that must not count ("pericardial effusion"); matched so that
                 medspaCy's longest-match rule hides the shorter term, then dropped.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from secondread.errors import SecondreadError
from secondread.files import read_limited

MAX_NOTE_BYTES = 1_000_000
CONTEXT_FLAGS = ("negated", "uncertain", "historical", "hypothetical", "family")
EXCLUDED_CATEGORY = "EXCLUDE"
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _silence_note_logging() -> None:
    """PyRuSH logs every sentence it splits at DEBUG through loguru; note text must never reach logs."""
    from loguru import logger

    logger.disable("PyRuSH")


_silence_note_logging()
# medspaCy's sectionizer and ConText each keep a matcher that is empty by design; spaCy warns on every note.
warnings.filterwarnings("ignore", message=r".*\[W036\]", module=r"medspacy\.")


@dataclass
class Fact:
    """One mention of a concept in a note, with the ConText attributes that qualify it.

    ``start``/``end`` are character offsets into the note text, so ``text == note[start:end]``.
    ``section`` is medspaCy's section category (e.g. ``"past_medical_history"``) or ``None``.
    """

    concept: str
    category: str
    text: str
    start: int
    end: int
    section: str | None
    sentence: str
    negated: bool = False
    uncertain: bool = False
    historical: bool = False
    hypothetical: bool = False
    family: bool = False
    attributes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict (the report's contract)."""
        return asdict(self)


@dataclass
class RecordFacts:
    """Everything one record (a note, later FHIR) says about the patient for one body area."""

    source: str | None
    area: str
    facts: list[Fact] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``{"source", "area", "facts": [...]}``."""
        return {"source": self.source, "area": self.area, "facts": [f.to_dict() for f in self.facts]}

    def affirmed(self, concept: str) -> list[Fact]:
        """Mentions that say the patient has (or had) ``concept``.

        Excludes negated, uncertain, hypothetical and family mentions; historical ones are kept
        (check ``fact.historical`` to tell a past illness from a present one).
        """
        return [
            f
            for f in self._about(concept)
            if not (f.negated or f.uncertain or f.hypothetical or f.family)
        ]

    def negated(self, concept: str) -> list[Fact]:
        """Mentions that say the patient does not have ``concept`` (family mentions excluded)."""
        return [f for f in self._about(concept) if f.negated and not f.family]

    def uncertain(self, concept: str) -> list[Fact]:
        """Mentions that raise ``concept`` as possible ("possible pneumonia", "rule out TB")."""
        return [
            f
            for f in self._about(concept)
            if f.uncertain and not (f.negated or f.hypothetical or f.family)
        ]

    def concepts(self) -> set[str]:
        """All concepts mentioned at all, whatever their context."""
        return {f.concept for f in self.facts}

    def _about(self, concept: str) -> list[Fact]:
        return [f for f in self.facts if f.concept == concept]


# ---------------------------------------------------------------------------------------- reading


def read_note(path: str | os.PathLike) -> str:
    """Read a note as UTF-8 text, refusing anything that is not a plausible note.

    Why so strict: a wrong file (an image, an empty export) would otherwise silently yield "no
    facts", which reads like "nothing relevant in the record".

    Raises
    ------
    SecondreadError
        Missing, a directory, unreadable, larger than 1 MB, binary or not UTF-8, or empty.
    """
    data = read_limited(path, MAX_NOTE_BYTES, "note", "a text note")
    return _decode_note(path, data)


def _decode_note(path, data: bytes) -> str:
    """Decode bytes as UTF-8 text; NUL bytes or invalid UTF-8 mean a binary file, not a note."""
    if b"\x00" in data:
        raise SecondreadError(path, "not a text note (binary content)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SecondreadError(path, "not a text note (not UTF-8 text)") from None
    if not text.strip():
        raise SecondreadError(path, "note is empty")
    return text


# --------------------------------------------------------------------------------------- pipeline


def rules_dir() -> Path:
    """The folder of rule files shipped with the package."""
    return Path(str(resources.files("secondread.records") / "rules"))


def areas() -> list[str]:
    """Body areas that have a target rule file (every JSON except the shared ones)."""
    shared = {"context.json", "sections.json"}
    return sorted(p.stem for p in rules_dir().glob("*.json") if p.name not in shared)


def load_target_rules(area: str):
    """The medspaCy TargetRules for ``area``, read from ``rules/<area>.json``."""
    from medspacy.ner import TargetRule

    path = rules_dir() / f"{area}.json"
    if not path.is_file():
        raise SecondreadError(None, f"no record rules for area {area!r} (known: {', '.join(areas())})")
    return TargetRule.from_json(str(path))


# ConText rule files added to medspaCy's defaults; a file's "replace_defaults" lists default
# literals it supersedes. context_negex.json holds the additions measured on the NegEx kit's
# development part (see records/negex.py), so notes and the evaluation read with the same rules.
CONTEXT_RULE_FILES = ("context.json", "eval/context_negex.json")


def add_context_rules(context, additions: bool = True) -> None:
    """Give a ConText component medspaCy's default rules, plus ours (minus the defaults ours replace)."""
    from medspacy.context import ConTextRule

    defaults = ConTextRule.from_json(context.DEFAULT_RULES_FILEPATH)
    if not additions:
        context.add(defaults)
        return
    replaced: set[str] = set()
    extra = []
    for name in CONTEXT_RULE_FILES:
        path = rules_dir() / name
        replaced |= set(json.loads(path.read_text(encoding="utf-8")).get("replace_defaults", []))
        extra += ConTextRule.from_json(str(path))
    context.add([r for r in defaults if r.literal not in replaced] + extra)


@functools.lru_cache(maxsize=None)
def section_attributes() -> dict:
    """Section category -> ConText attributes it implies (``rules/sections.json``)."""
    data = json.loads((rules_dir() / "sections.json").read_text(encoding="utf-8"))
    return data["section_attributes"]


def add_section_rules(sectionizer) -> None:
    """medspaCy's default section headings, with ours (``rules/sections.json``) replacing the
    defaults of the same heading (case-insensitive, as the sectionizer matches)."""
    from medspacy.section_detection import SectionRule

    ours = SectionRule.from_json(str(rules_dir() / "sections.json"))
    replaced = {r.literal.lower() for r in ours}
    defaults = SectionRule.from_json(sectionizer.DEFAULT_RULES_FILEPATH)
    sectionizer.add([r for r in defaults if r.literal.lower() not in replaced] + ours)


@functools.lru_cache(maxsize=None)
def build_pipeline(area: str = "chest"):
    """The medspaCy pipeline for ``area``, built once per process (loading takes about 2 s).

    The sectionizer's own span attributes are off: :func:`_flags` applies ``rules/sections.json``
    itself, so one place decides every flag.
    """
    import medspacy

    target_rules = load_target_rules(area)
    nlp = medspacy.load(
        medspacy_enable=["medspacy_tokenizer", "medspacy_pyrush", "medspacy_target_matcher"]
    )
    nlp.get_pipe("medspacy_target_matcher").add(target_rules)
    add_section_rules(nlp.add_pipe("medspacy_sectionizer", config={"rules": None, "span_attrs": None}))
    add_context_rules(nlp.add_pipe("medspacy_context", config={"rules": None}))
    return nlp


# ------------------------------------------------------------------------------------- extraction


def extract_facts(text: str, area: str = "chest", source: str | None = None) -> RecordFacts:
    """Find the concepts of ``area`` in ``text``, each with section and ConText attributes.

    Parameters
    ----------
    text : str
        The note (see :func:`read_note`).
    area : str
        Body area whose rule file to use (``"chest"``).
    source : str, optional
        What to call the note in the report and in errors (e.g. its file name).

    Example
    -------
    >>> facts = extract_facts("No evidence of pneumonia. History of asthma.")
    >>> [(f.concept, f.negated, f.historical) for f in facts.facts]
    [('pneumonia', True, False), ('asthma', False, True)]
    """
    nlp = build_pipeline(area)
    if len(text) > nlp.max_length:
        raise SecondreadError(source, "note is too long to analyse")
    doc = nlp(text)
    facts = [_fact(ent) for ent in doc.ents if ent.label_ != EXCLUDED_CATEGORY]
    return RecordFacts(source=source, area=area, facts=facts)


def extract_from_file(path: str | os.PathLike, area: str = "chest") -> RecordFacts:
    """Read a note file and extract its facts; ``source`` is the file's name only.

    Folder names often carry a patient's name or record number; a report needs only the file name.
    """
    return extract_facts(read_note(path), area=area, source=Path(path).name)


def _fact(ent) -> Fact:
    """Turn one medspaCy entity into a Fact."""
    rule = ent._.target_rule
    metadata = rule.metadata or {}
    attributes = dict(metadata.get("attributes", {}))
    if metadata.get("concept") == "smoking":
        attributes.update(_pack_years(ent))
    return Fact(
        concept=metadata.get("concept", rule.literal.lower()),
        category=ent.label_,
        text=ent.text,
        start=ent.start_char,
        end=ent.end_char,
        section=ent._.section_category,
        sentence=ent.sent.text.strip(),
        attributes=attributes,
        **_flags(ent),
    )


def _flags(ent) -> dict[str, bool]:
    """The five ConText flags of an entity, from three sources (any of them can set a flag):

    - the target rule's own ``attributes`` ("afebrile" is a negated fever);
    - ConText modifiers, except those inside the section heading: PyRuSH keeps "SOCIAL HISTORY:"
      in the first sentence of its section, and "HISTORY" there must not make a smoker historical;
    - the section (``rules/sections.json``): a fact under FAMILY HISTORY is about the family.
    """
    from medspacy.context.context import DEFAULT_ATTRIBUTES

    set_by = [ent._.target_rule.attributes or {}]
    title = ent._.section_title
    for modifier in ent._.modifiers:
        start, end = modifier.modifier_span
        if title is not None and title.start <= start and end <= title.end:
            continue
        set_by.append(DEFAULT_ATTRIBUTES.get(modifier.category, {}))
    set_by.append(section_attributes().get(ent._.section_category, {}))
    return {flag: any(d.get(f"is_{flag}", False) for d in set_by) for flag in CONTEXT_FLAGS}


def _pack_years(ent) -> dict:
    """``{"pack_years": n}`` when the smoking span carries a number ("30 pack-year smoker")."""
    if not re.search(r"pack|py", ent.text, re.IGNORECASE):
        return {}
    number = _NUMBER.search(ent.text)
    if number is None:
        return {}
    value = float(number.group())
    return {"pack_years": int(value) if value.is_integer() else value}
