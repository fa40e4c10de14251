"""Sections of a MIMIC-CXR free-text report, following the dataset's official section parser.

MIT-LCP/mimic-cxr ``txt/section_parser.py`` splits a report at upper-case headings
(``FINDINGS:``), maps each heading to a normal name through a table of synonyms and
misspellings (``CONCLUSION`` and ``FINDINGS AND IMPRESSION`` are the impression,
``CHEST, TWO VIEWS`` the findings, ...), then by the main section it contains or a
findings-like phrase, drops empty findings/impression sections, and, when a report has
neither, takes its last paragraph(s) as ``last_paragraph``. This module does the same.
"""

from __future__ import annotations

import re

HEADING = re.compile(r"^[ \t]*([A-Z][A-Z ()/,&-]*):(?=\s)", re.MULTILINE)
BLANK_LINE = re.compile(r"\n[ \t]*\n")

# heading (lower case) -> normal name, as in the official parser's table
SYNONYMS = {
    "comparisons": "comparison", "clinical history": "history", "reason for examination": "indication",
    "reason for exam": "indication", "clinical information": "history", "exam": "examination",
    "clinical indication": "indication", "conclusion": "impression", "chest, two views": "findings",
    "recommendation(s)": "recommendations", "type of examination": "examination", "reference exam": "comparison",
    "patient history": "history", "comparison exam": "comparison", "findings and impression": "impression",
    "comparison film": "comparison", "findings/impression": "impression", "findings/ impression": "impression",
    "pfi": "history", "recommendation": "recommendations", "wetread": "wet read", "ndication": "impression",
    "impresson": "impression", "imprression": "impression", "imoression": "impression", "impressoin": "impression",
    "imprssion": "impression", "impresion": "impression", "imperssion": "impression", "mpression": "impression",
    "impession": "impression", "finding": "findings", "findins": "findings", "findindgs": "findings",
    "findgings": "findings", "findngs": "findings", "findnings": "findings", "finidngs": "findings",
    "idication": "indication", "reference findings": "findings", "comparision": "comparison",
    "comparsion": "comparison", "comparrison": "comparison", "comparisions": "comparison",
    "concusion": "conclusion", "coinclusion": "conclusion",
}
KNOWN = {"preamble", "impression", "comparison", "indication", "findings", "examination", "technique", "history",
         "notification", "recommendations", "addendum", "date", "comment", "wet read"}
MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
FINDINGS_LIKE = re.compile(
    "chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|two views|frontal view|"
    "pa view|ap view|one view|lateral view|bone window|frontal upright|frontal semi-upright|ribs|pa and lat"
)


def normal_name(heading: str) -> str:
    """The official parser's normal name of a heading (its own lower-case text when nothing maps it)."""
    name = heading.lower().strip()
    if name in KNOWN:
        return name
    if name in SYNONYMS:
        return SYNONYMS[name]
    main = next((section for section in MAIN_SECTIONS if section in name), None)
    if main is not None:
        return main
    return "findings" if FINDINGS_LIKE.search(name) else name


def report_sections(text: str) -> dict[str, str]:
    """``{normal name: text}`` (whitespace collapsed; repeated sections joined), with ``last_paragraph`` as the fallback."""
    heads = list(HEADING.finditer(text))
    parts: list[tuple[str, str]] = [("preamble", text[: heads[0].start()])] if heads else [("full report", text)]
    for head, following in zip(heads, heads[1:] + [None]):
        parts.append((normal_name(head.group(1)), text[head.end() : following.start() if following else len(text)]))
    parts = [(name, body) for name, body in parts if name not in ("findings", "impression") or body.strip()]
    if not any(name in ("findings", "impression") for name, _ in parts):
        first, *rest = BLANK_LINE.split(parts[-1][1].strip("\n"))
        if rest:
            parts[-1] = (parts[-1][0], first)
            parts.append(("last_paragraph", "\n\n".join(rest)))
    sections: dict[str, str] = {}
    for name, body in parts:
        joined = " ".join(body.split())
        sections[name] = f"{sections[name]} {joined}".strip() if name in sections else joined
    return sections
