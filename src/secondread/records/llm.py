"""An optional language model that summarises and explains, kept honest by the structured result.

Why optional and why guarded: the structured findings (labels, calibrated probabilities, sizes)
and the record's facts are what secondread measured; a language model can say them in better
prose, but it can also invent a nodule, a side or a size. So its words are checked against the
structured result before they reach a report: any finding or concept, laterality (left, right,
bilateral), size or number with a unit, or reporting category (BI-RADS 4, Lung-RADS 3, ...) that the
structured result does not contain, or a concept stated with the opposite stance ("no pneumonia"
when the image model suggests it and nothing says it is absent; a finding asserted that the result
has only as absent or negative), gets the whole answer dropped, and the deterministic summary
(a template over the same structured data) is used instead, with the reason in ``Summary.note``.
Time-outs, refused connections, HTTP errors and malformed JSON fall back the same way. Nothing
here raises to the user once configured, and nothing logs record text (only one-line reasons).

Protocol: the OpenAI-compatible chat API that llama.cpp's server, Ollama and vLLM expose
(``POST {url}/v1/chat/completions``), spoken with the standard library; no SDK.

Privacy and the no-network rule: off by default; the URL must be on this machine (loopback:
``127.0.0.0/8``, ``::1``, ``localhost``) unless the user explicitly passes ``allow_remote=True``.
Environment proxies and HTTP redirects are ignored, so a loopback URL cannot be bounced elsewhere.
The model receives only the structured findings and the record's concepts with their ConText
flags, statuses and demographics (age, sex): never note sentences, names, identifiers or dates;
every string is also scrubbed of identifier-like patterns before it is sent.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from secondread.errors import SecondreadError
from secondread.finding import format_probability

log = logging.getLogger(__name__)

DISCLAIMER = "Decision support, not a diagnosis."
SYSTEM_PROMPT = (
    "You help a radiologist read a second reader's structured result. Use only the facts in the JSON "
    "you are given. Never add a finding, a side (left/right), a size, a number or a category that is not "
    "in the JSON. Write at most four short sentences of plain text. This is decision support, not a diagnosis."
)


@dataclass(frozen=True)
class LLMConfig:
    """Where the language model is. Validated on creation: a bad URL is a one-line user error.

    Parameters
    ----------
    url : str
        Base URL of an OpenAI-compatible server, e.g. ``http://127.0.0.1:8080``.
    model : str
        The model name the server expects.
    timeout : float
        Seconds for the whole request; past it the deterministic summary is used.
    allow_remote : bool
        Allow a URL that is not on this machine. Off by default: the record's findings would leave it.
    max_tokens : int
        Upper bound on the answer's length.
    """

    url: str
    model: str
    timeout: float = 30.0
    allow_remote: bool = False
    max_tokens: int = 300

    def __post_init__(self):
        check_url(self.url, self.allow_remote)
        if not (isinstance(self.model, str) and self.model.strip()):
            raise SecondreadError(None, "language-model name is empty")
        if not (0 < float(self.timeout) <= 3600):
            raise SecondreadError(None, "language-model time-out must be between 0 and 3600 seconds")

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/v1/chat/completions"


@dataclass
class Summary:
    """Text for the report, where it came from (``"llm"`` or ``"deterministic"``) and why."""

    text: str
    source: str
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_url(url: str, allow_remote: bool = False) -> str:
    """Refuse a URL that is not http(s) on loopback (unless ``allow_remote``); return it unchanged.

    No name is resolved: only ``localhost`` and literal loopback addresses count as local.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except (ValueError, AttributeError):
        raise SecondreadError(None, "language-model URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise SecondreadError(None, "language-model URL must be http:// or https:// with a host")
    if allow_remote or _is_loopback(host):
        return url
    raise SecondreadError(None, "language-model URL is not on this machine (use 127.0.0.1, ::1 or localhost); "
                                "sending findings elsewhere needs an explicit allow-remote setting")


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------- the API


def summarise(record_summary: dict | None, findings: list[dict] | None,
              config: LLMConfig | None = None) -> Summary:
    """A short summary of the findings and the record for the report.

    Without ``config`` (the default) the deterministic summary is returned. With it, the model's
    answer is used only if it passes :func:`check_output`; otherwise the deterministic summary,
    with the reason in ``note``.
    """
    fallback = deterministic_summary(record_summary, findings)
    if config is None:
        return Summary(fallback, "deterministic", None)
    facts = structured_payload(record_summary, findings)
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "Summarise this result for the report.\n" + json.dumps(facts)}]
    return _ask(config, messages, facts, fallback)


def explain_why(question: str, findings: list[dict] | None, record_summary: dict | None,
                config: LLMConfig | None = None) -> Summary:
    """Answer a "why" question about a finding from the structured result (guarded like :func:`summarise`)."""
    fallback = deterministic_explanation(findings, record_summary)
    if config is None:
        return Summary(fallback, "deterministic", None)
    facts = structured_payload(record_summary, findings)
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "Question: " + scrub(str(question))[:500]
                 + "\nAnswer from this result only.\n" + json.dumps(facts)}]
    return _ask(config, messages, facts, fallback)


def _ask(config: LLMConfig, messages: list[dict], facts: dict, fallback: str) -> Summary:
    try:
        text = chat(config, messages)
    except LLMUnavailable as exc:
        return _fallback(fallback, f"language model not used: {exc}")
    problems = check_output(text, facts)
    if problems:
        return _fallback(fallback, "language model answer dropped by the guardrail: " + "; ".join(problems[:3]))
    return Summary(text.strip(), "llm", None)


def _fallback(text: str, reason: str) -> Summary:
    reason = " ".join(reason.split())
    log.warning("%s; deterministic summary used", reason)
    return Summary(text, "deterministic", reason)


# ------------------------------------------------------------------------------------ transport


class LLMUnavailable(Exception):
    """The server did not give a usable answer (message: one line, no record text)."""


def _opener() -> urllib.request.OpenerDirector:
    """No proxies from the environment, no redirects: the request stays where the user pointed it."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            raise urllib.error.HTTPError(req.full_url, code, "redirect refused", headers, fp)

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def chat(config: LLMConfig, messages: list[dict]) -> str:
    """POST a chat completion and return the first choice's text, within ``config.timeout`` in all.

    The request runs in a daemon thread so that a server that accepts and then dribbles bytes
    cannot hold the report past the time-out (the socket's own time-out only bounds each read).

    Raises
    ------
    LLMUnavailable
        Time-out, connection error, HTTP error, malformed JSON or an answer without text.
    """
    body = json.dumps({"model": config.model, "messages": messages, "temperature": 0,
                       "max_tokens": config.max_tokens, "stream": False}).encode("utf-8")
    request = urllib.request.Request(config.endpoint, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    results: queue.Queue = queue.Queue(maxsize=1)

    def work():
        try:
            with _opener().open(request, timeout=config.timeout) as response:
                results.put(("ok", response.read(4_000_000)))
        except BaseException as exc:  # handed to the caller's thread, which classifies it
            results.put(("error", exc))

    started = time.monotonic()
    threading.Thread(target=work, name="secondread-llm", daemon=True).start()
    try:
        kind, value = results.get(timeout=config.timeout)
    except queue.Empty:
        raise LLMUnavailable(f"no answer within the {config.timeout:g} s time-out") from None
    if kind == "error":
        raise LLMUnavailable(_describe(value, config.timeout)) from None
    try:
        data = json.loads(value.decode("utf-8"))
        text = data["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, ValueError):
        raise LLMUnavailable("malformed answer (not JSON)") from None
    except (KeyError, IndexError, TypeError):
        raise LLMUnavailable("malformed answer (no choices[0].message.content)") from None
    if not isinstance(text, str) or not text.strip():
        raise LLMUnavailable("empty answer")
    log.info("language model answered in %.2f s", time.monotonic() - started)
    return text


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP error {exc.code}"
    if isinstance(exc, (TimeoutError,)) or "timed out" in str(exc):
        return f"no answer within the {timeout:g} s time-out"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        name = getattr(reason, "strerror", None) or type(reason).__name__
        return f"cannot reach the server ({name})"
    if isinstance(exc, ConnectionError):
        return f"connection failed ({type(exc).__name__})"
    return f"request failed ({type(exc).__name__})"


# ------------------------------------------------------------------------- what the model sees


_IDENTIFIER_PATTERNS = [
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),             # dates
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),
    re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b"),                     # e-mail
    re.compile(r"\b\d+(?:\.\d+){3,}\b"),                            # UIDs / OIDs
    re.compile(r"(?<![\d.])\d{5,}(?![\d.])"),                       # record numbers, phones
    re.compile(r"\(?\b\d{3}\)?[ -]\d{3}-\d{4}\b"),                  # phone
    re.compile(r"\b(?:MRN|ID|Acc(?:ession)?(?:\s*No)?|SSN)\s*[:#]?\s*\S+", re.IGNORECASE),
    re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr)\.?\s+[A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?"),
]


def scrub(text: str) -> str:
    """Replace identifier-like patterns (dates, numbers of 5+ digits, UIDs, e-mail, MRN/ID/accession
    labels, titled names) with ``[removed]``. A defence in depth: the payload has no free text anyway."""
    for pattern in _IDENTIFIER_PATTERNS:
        text = pattern.sub("[removed]", text)
    return text


def structured_payload(record_summary: dict | None, findings: list[dict] | None) -> dict[str, Any]:
    """The only data a model sees: findings and record concepts with their flags, no free text."""
    record_summary = record_summary or {}
    out_findings = []
    for f in findings or []:
        item = {k: f.get(k) for k in ("label", "probability", "positive", "operating_point_crossed") if k in f}
        for key in ("laterality", "side", "category", "size_mm", "count"):
            if f.get(key) is not None:
                item[key] = f[key]
        if f.get("measurements"):
            item["measurements"] = {k: v for k, v in f["measurements"].items() if isinstance(v, (int, float))}
        out_findings.append(item)
    record = []
    seen = set()
    for fact in record_summary.get("facts") or []:
        item = {"concept": fact.get("concept"), "stance": _stance(fact),
                "from": fact.get("origin") or ("fhir" if str(fact.get("section") or "").startswith("fhir:") else "note")}
        pack_years = (fact.get("attributes") or {}).get("pack_years")
        if pack_years is not None:
            item["pack_years"] = pack_years
        key = json.dumps(item, sort_keys=True)
        if item["concept"] and key not in seen:
            seen.add(key)
            record.append(item)
    demographics = record_summary.get("demographics") or {}
    payload = {
        "findings": out_findings,
        "patient": {k: demographics.get(k) for k in ("age", "sex") if demographics.get(k) is not None},
        "record": record,
        "contradictions": [{k: c.get(k) for k in ("concept", "note_says", "record_says")}
                           for c in record_summary.get("contradictions") or []],
    }
    return _scrub_strings(payload)


def _scrub_strings(value: Any) -> Any:
    """Scrub every string in a JSON-like value; numbers stay numbers (a volume of 123456 mm³ is
    not an identifier, and scrubbing the serialised JSON would break it)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_strings(v) for v in value]
    return value


def _stance(fact: dict) -> str:
    if fact.get("family"):
        return "family history"
    if fact.get("hypothetical"):
        return "hypothetical"
    if fact.get("negated"):
        return "absent"
    if fact.get("uncertain"):
        return "possible"
    if fact.get("historical"):
        return "past"
    return "present"


# ------------------------------------------------------------------------------ deterministic text


SMOKING_WORDS = {"present": "current smoker", "past": "former smoker", "absent": "never smoker",
                 "possible": "possible smoker", "family history": "family history of smoking",
                 "hypothetical": "smoking if it occurs (hypothetical)"}
# One sentence per stance, worded so that ConText reads each stance back as written (the guardrail
# reads the deterministic text with the same rules as a model's): a list such as "present: fever;
# absent: pneumonia" would let the backward trigger "absent" negate "fever" too.
RECORD_SENTENCES = {
    "present": "The record mentions {}.",
    "past": "The record mentions a history of {}.",
    "possible": "The record raises possible {}.",
    "absent": "The record says no {}.",
    "family history": "The record mentions a family history of {}.",
}
# Not "Smoking: never smoker": the guardrail would read the heading as a smoking affirmed.
SMOKING_SENTENCE = "Recorded: {}."


def template_list(stance: str, concepts: list[str]) -> str:
    """``a, b`` or, for absent concepts, ``a, no b`` (every item under its own negation trigger)."""
    return (", no " if stance == "absent" else ", ").join(concepts)


def _words(concept: str) -> str:
    return {"copd": "COPD"}.get(concept, concept.replace("_", " "))


def deterministic_summary(record_summary: dict | None, findings: list[dict] | None) -> str:
    """The summary from the structured data alone (what the report says when no model is used)."""
    payload = structured_payload(record_summary, findings)
    parts = [_finding_sentence(f) for f in payload["findings"]]
    patient = payload["patient"]
    if patient:
        who = " ".join(str(x) for x in ([f"{patient['age']}-year-old"] if "age" in patient else [])
                       + [patient.get("sex") or "patient"])
        parts.append(f"Patient: {who}.")
    by_stance: dict[str, list[str]] = {}
    smoking: list[str] = []
    for item in payload["record"]:
        if item["concept"] == "smoking":
            words = SMOKING_WORDS.get(item["stance"], f"smoking ({item['stance']})")
            if item.get("pack_years") is not None:
                words += f", {item['pack_years']} pack-years"
            words += f" ({'coded record' if item['from'] == 'fhir' else 'note'})"
            bucket = smoking
        else:
            words = _words(item["concept"])
            bucket = by_stance.setdefault(item["stance"], [])
        if words not in bucket:
            bucket.append(words)
    for stance, template in RECORD_SENTENCES.items():
        if by_stance.get(stance):
            parts.append(template.format(template_list(stance, by_stance[stance])))
    if smoking:
        parts.append(SMOKING_SENTENCE.format(", ".join(smoking)))
    for c in payload["contradictions"]:
        parts.append(f"The note and the coded record disagree on {_words(c['concept'])} "
                     f"(note: {c['note_says']}; record: {c['record_says']}).")
    if not parts:
        parts.append("No findings and no record were given.")
    parts.append(DISCLAIMER)
    return " ".join(parts)


def deterministic_explanation(findings: list[dict] | None, record_summary: dict | None) -> str:
    """Why the result says what it says, from the structured data alone."""
    payload = structured_payload(record_summary, findings)
    parts = []
    for f in payload["findings"]:
        parts.append(_finding_sentence(f) + " The image model's calibrated probability and the operating "
                     "point it crosses decide the suggestion; the highlighted region shows where it looked.")
    present = [_words(i["concept"]) for i in payload["record"]
               if i["stance"] in ("present", "past") and i["concept"] != "smoking"]
    smoking = [SMOKING_WORDS[i["stance"]] for i in payload["record"]
               if i["concept"] == "smoking" and i["stance"] in ("present", "past", "absent")]
    absent = [_words(i["concept"]) for i in payload["record"] if i["stance"] == "absent" and i["concept"] != "smoking"]
    if present:
        parts.append("The record mentions " + ", ".join(dict.fromkeys(present)) + ".")
    if smoking:
        parts.append(SMOKING_SENTENCE.format(", ".join(dict.fromkeys(smoking))))
    if absent:
        parts.append("The record says no " + ", no ".join(dict.fromkeys(absent)) + ".")
    parts.append(DISCLAIMER)
    return " ".join(parts)


def _finding_sentence(f: dict) -> str:
    label = _words(str(f.get("label")))
    p = f.get("probability")
    prob = f" (calibrated probability {format_probability(float(p))})" if isinstance(p, (int, float)) else ""
    verb = "suggests" if f.get("positive") else "does not suggest"
    return f"The image model {verb} {label}{prob}."


# ----------------------------------------------------------------------------------- guardrail


@functools.lru_cache(maxsize=1)
def guard_rules() -> dict[str, Any]:
    """``rules/llm/guard.json`` plus every area's target-rule literals (word -> concept)."""
    from secondread.records.notes import areas, rules_dir

    rules = json.loads((rules_dir() / "llm" / "guard.json").read_text(encoding="utf-8"))
    terms: dict[str, str] = {}
    attributes: dict[str, dict] = {}  # "never smoker" -> {"is_negated": True}
    for area in areas():
        try:
            data = json.loads((rules_dir() / f"{area}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for rule in data.get("target_rules", []) if isinstance(data, dict) else []:
            literal = str(rule.get("literal", "")).strip()
            if not literal or "(" in literal:
                continue
            concept = (rule.get("metadata") or {}).get("concept") or literal.lower()
            if rule.get("category") == "EXCLUDE":
                concept = "other: " + literal.lower()  # "pericardial effusion" is not the pleural one
            key = literal if literal.isupper() else literal.lower()
            terms[key] = concept
            if rule.get("attributes"):
                attributes[key] = dict(rule["attributes"])
    for word, concept in rules["terms"].items():
        terms.setdefault(word, concept)
    rules["all_terms"] = terms
    rules["term_attributes"] = attributes
    ordered = sorted(terms, key=len, reverse=True)
    lower = [t for t in ordered if not t.isupper()]
    upper = [t for t in ordered if t.isupper()]
    rules["lower_re"] = re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in lower) + r")(?![\w-])", re.IGNORECASE)
    rules["upper_re"] = re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in upper) + r")(?![\w-])") if upper else None
    units = sorted(rules["units"], key=len, reverse=True)
    rules["size_re"] = re.compile(r"(\d+(?:\.\d+)?)\s*-?\s*(" + "|".join(re.escape(u) for u in units) + r")(?![\w²])")
    systems = "|".join(re.escape(s).replace(r"\-", "[- ]?") for s in rules["category_systems"])
    rules["category_re"] = re.compile(r"\b(" + systems + r")\s*(?:category\s*)?(\d[A-Ca-c]?)\b", re.IGNORECASE)
    side_words = sorted(rules["laterality"], key=len, reverse=True)
    rules["side_re"] = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in side_words) + r")(?![\w])", re.IGNORECASE)
    return rules


def mentioned_concepts(text: str) -> set[str]:
    """Concepts named in ``text`` (longest phrase first, each span counted once)."""
    rules = guard_rules()
    terms = {k.lower(): v for k, v in rules["all_terms"].items() if not k.isupper()}
    found = {terms[m.group(1).lower()] for m in rules["lower_re"].finditer(text)}
    if rules["upper_re"] is not None:
        found |= {rules["all_terms"][m.group(1)] for m in rules["upper_re"].finditer(text)}
    return found


def check_output(text: str, facts: dict[str, Any]) -> list[str]:
    """Reasons ``text`` says more than the structured result ``facts`` (empty: it may be used).

    ``facts`` is :func:`structured_payload`'s output. Checked: concepts and findings (any mention,
    affirmed or not: a model that says "no pneumothorax" claims something nobody measured),
    lateralities, numbers with a unit (tolerating unit conversion and rounding, probabilities as
    per cent), reporting categories, and stance (:func:`_stance_problems`: the text is read with
    ConText, and the deterministic summary is worded so that it always reads back as it was meant).
    """
    rules = guard_rules()
    flat = json.dumps(facts)
    allowed = _allowed_concepts(facts)
    problems = []
    invented = sorted(mentioned_concepts(text) - allowed)
    if invented:
        problems.append("mentions " + ", ".join(c.replace("_", " ") for c in invented) + ", not in the structured result")
    allowed_sides = {rules["laterality"][m.group(1).lower()] for m in rules["side_re"].finditer(flat)}
    sides = sorted({rules["laterality"][m.group(1).lower()] for m in rules["side_re"].finditer(text)} - allowed_sides)
    if sides:
        problems.append("states laterality " + ", ".join(sides) + ", not in the structured result")
    numbers = _numbers(facts)
    for match in rules["size_re"].finditer(text):
        value, unit = float(match.group(1)), match.group(2)
        if not _number_known(value, match.group(1), rules["units"][unit], numbers):
            problems.append(f"states {match.group(1)} {unit}, not in the structured result")
    known = {(s.lower().replace("-", "").replace(" ", ""), n.lower()) for s, n in rules["category_re"].findall(flat)}
    for system, value in rules["category_re"].findall(text):
        if (system.lower().replace("-", "").replace(" ", ""), value.lower()) not in known:
            problems.append(f"states {system} {value}, not in the structured result")
    problems += _stance_problems(text, facts, allowed)
    return problems


# ---------------------------------------------------------------------------- guardrail: stance


def _stance_problems(text: str, facts: dict, allowed: set[str]) -> list[str]:
    """A concept the text states with the opposite polarity of everything the result says about it.

    "No pneumonia" while the image model suggests pneumonia (and nothing says it is absent), or
    "pneumothorax is present" while the record only has it as absent. Only affirmed and negated
    mentions are compared; uncertain, hypothetical and family mentions, and concepts the result
    has only as possible / hypothetical / family history, are not (no polarity to contradict).
    """
    support = _supported_stances(facts)
    problems = []
    for concept, stances in sorted(stated_stances(text).items()):
        if concept not in allowed:
            continue  # already reported as an invention
        has = support.get(concept, set())
        for stance in sorted(stances - has):
            opposite = {"affirmed": "negated", "negated": "affirmed"}[stance]
            if opposite in has:
                said = "present" if stance == "affirmed" else "absent"
                known = "absent" if stance == "affirmed" else "present"
                problems.append(f"states {concept.replace('_', ' ')} as {said}, the structured result has it as {known}")
    return problems


_POLARITY = {"present": "affirmed", "past": "affirmed", "absent": "negated"}


def _supported_stances(facts: dict) -> dict[str, set[str]]:
    """Concept -> the polarities the structured result gives it (``affirmed``, ``negated``).

    A positive image finding, a present or past record concept: affirmed. A negative finding, an
    absent concept: negated. A contradiction between note and record: both.
    """
    rules = guard_rules()
    support: dict[str, set[str]] = {}

    def add(name: str, polarities: set[str]) -> None:
        for concept in {name, name.replace("-", "_")} | mentioned_concepts(name.replace("_", " ")):
            support.setdefault(concept, set()).update(polarities)

    for f in facts.get("findings", []):
        if isinstance(f.get("positive"), bool):
            add(str(f.get("label") or ""), {"affirmed" if f["positive"] else "negated"})
    for item in facts.get("record", []):
        if item.get("stance") in _POLARITY:
            add(str(item.get("concept") or ""), {_POLARITY[item["stance"]]})
    for c in facts.get("contradictions", []):
        add(str(c.get("concept") or ""), {"affirmed", "negated"})
    malignant = set().union(*(support.get(c, set()) for c in rules["malignancy_concepts"]))
    if malignant:
        support.setdefault("malignancy", set()).update(malignant)
    return support


@functools.lru_cache(maxsize=1)
def _stance_reader():
    """Tokenizer, PyRuSH sentences and ConText with the notes' rules: the model's words are read
    the way a note is, plus ``context_rules`` of ``rules/llm/guard.json`` (built once; the concept
    spans come from the guardrail's own term list)."""
    import medspacy
    from medspacy.context import ConTextRule

    from secondread.records.notes import add_context_rules

    nlp = medspacy.load(medspacy_enable=["medspacy_tokenizer", "medspacy_pyrush"])
    # A trigger inside a concept term belongs to the term ("never smoker" is a negated smoking by
    # its own attributes) and must not negate the next concept ("never smoker, fever").
    context = nlp.add_pipe("medspacy_context", config={"rules": None, "prune_on_target_overlap": True})
    add_context_rules(context)
    context.add([ConTextRule.from_dict(d) for d in guard_rules()["context_rules"]])
    return nlp


def stated_stances(text: str) -> dict[str, set[str]]:
    """Concept -> polarities the text states it with: ``affirmed`` or ``negated``.

    Concept spans are the guardrail's term matches (same as :func:`mentioned_concepts`); a term's
    own attributes count ("never smoker" is a negated smoking, "former smoker" an affirmed one),
    then ConText's modifiers. Uncertain, hypothetical and family mentions are left out.
    """
    from spacy.util import filter_spans

    rules = guard_rules()
    nlp = _stance_reader()
    doc = nlp(text, disable=["medspacy_context"])
    spans, term_of = [], {}
    matches = list(rules["lower_re"].finditer(text))
    if rules["upper_re"] is not None:
        matches += list(rules["upper_re"].finditer(text))
    lower_terms = {k.lower(): k for k in rules["all_terms"] if not k.isupper()}
    for m in matches:
        term = m.group(1) if m.group(1) in rules["all_terms"] else lower_terms[m.group(1).lower()]
        span = doc.char_span(m.start(1), m.end(1), label=rules["all_terms"][term], alignment_mode="expand")
        if span is not None:
            spans.append(span)
            term_of[(span.start, span.end)] = term
    doc.ents = filter_spans(spans)
    nlp.get_pipe("medspacy_context")(doc)
    out: dict[str, set[str]] = {}
    for ent in doc.ents:
        own = rules["term_attributes"].get(term_of.get((ent.start, ent.end), ""), {})
        flag = lambda name: bool(getattr(ent._, name) or own.get(name))  # noqa: E731
        if flag("is_uncertain") or flag("is_hypothetical") or flag("is_family"):
            continue
        out.setdefault(ent.label_, set()).add("negated" if flag("is_negated") else "affirmed")
    return out


def _allowed_concepts(facts: dict) -> set[str]:
    rules = guard_rules()
    allowed = set()
    for f in facts.get("findings", []):
        label = str(f.get("label") or "")
        allowed |= {label, label.replace("-", "_")} | mentioned_concepts(label.replace("_", " "))
    for item in facts.get("record", []) + facts.get("contradictions", []):
        concept = str(item.get("concept") or "")
        allowed |= {concept} | mentioned_concepts(concept.replace("_", " "))
    if allowed & set(rules["malignancy_concepts"]):
        allowed.add("malignancy")
    return allowed


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in _numbers(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in _numbers(v)]
    if isinstance(obj, str):
        return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", obj)]
    return []


def _number_known(value: float, written: str, scale: float, numbers: list[float]) -> bool:
    """Whether ``value`` (in a unit ``scale`` times the base unit) is one of ``numbers`` as written.

    Tolerance is the rounding of the written value (``12.3`` covers 12.25-12.35, ``12`` covers
    11.5-12.5); a probability 0.87 may be written as 87 %.
    """
    decimals = len(written.split(".")[1]) if "." in written else 0
    tolerance = 0.5 * 10 ** -decimals + 1e-9
    for n in numbers:
        for candidate in (n / scale, n * 100 / scale if 0 <= n <= 1 else None):
            if candidate is not None and abs(candidate - value) <= tolerance:
                return True
    return False
