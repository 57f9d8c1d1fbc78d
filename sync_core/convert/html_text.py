"""Event bodies: HTML (Graph ``itemBody`` with ``contentType`` html) <-> plain text.

Graph returns event bodies as HTML (Outlook wraps even typed text in ``<html><head>...``);
iCalendar DESCRIPTION is plain text (RFC 5545 3.8.1.5). The model compares the text form,
so both directions must be stable: ``html_to_text(text_to_html(t)) == t`` for ordinary text
(lines, single blank lines between paragraphs, runs of spaces, tabs, leading spaces).

Only the standard library is used (``html.parser``); nothing is fetched, no script runs.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

# Elements whose content is never text.
_SKIPPED = frozenset({"head", "style", "script", "title", "template", "noscript", "xml"})
# Elements that start and end a line (HTML "block" and table structure elements).
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "center", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
    "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary",
    "table", "tbody", "tfoot", "thead", "tr", "ul",
})
_CELLS = frozenset({"td", "th"})
# HTML collapsible white space (not U+00A0, which &nbsp; produces on purpose).
_COLLAPSIBLE = re.compile(r"[ \t\n\r\f]+")
_BLANK_RUN = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    """Collects the visible text; white space follows the HTML rendering rules loosely.

    Literal white space in the source collapses to one space and disappears at line ends;
    white space written as a character reference (``&nbsp;``, ``&#9;``) is kept, which is how
    :func:`text_to_html` keeps runs of spaces and tabs.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.pending_space = False
        self.at_line_start = True

    # -- output helpers --------------------------------------------------------------------
    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.pending_space and not self.at_line_start:
            self.parts.append(" ")
        self.pending_space = False
        self.parts.append(text)
        self.at_line_start = text.endswith("\n")

    def _newline(self) -> None:
        self.pending_space = False
        self.parts.append("\n")
        self.at_line_start = True

    def _ensure_line_break(self) -> None:
        if not self.at_line_start:
            self._newline()
        self.pending_space = False

    # -- parser callbacks ------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skip_depth += 1
            return
        if tag == "body":
            self.skip_depth = 0  # a missing </head> must not hide the body
            return
        if self.skip_depth:
            return
        if tag == "br":
            self._newline()
        elif tag in _BLOCKS:
            self._ensure_line_break()
            if tag == "pre":
                self.pre_depth += 1
        elif tag in _CELLS and not self.at_line_start:
            self.pending_space = True

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag in _BLOCKS:
            if tag == "pre":
                self.pre_depth = max(0, self.pre_depth - 1)
            self._ensure_line_break()
        elif tag in _CELLS and not self.at_line_start:
            self.pending_space = True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <hr/>, <p/>: an empty element, never an opened skip region.
        if tag in _SKIPPED:
            return
        self.handle_starttag(tag, attrs)
        if tag != "br":
            self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.pre_depth:
            self._emit(data.replace("\r\n", "\n").replace("\r", "\n"))
            return
        pieces = _COLLAPSIBLE.split(data)
        for index, piece in enumerate(pieces):
            if index > 0:
                self.pending_space = True
            if piece:
                self._emit(piece)

    def handle_entityref(self, name: str) -> None:
        if not self.skip_depth:
            self._emit(html.unescape(f"&{name};") if name else "&")

    def handle_charref(self, name: str) -> None:
        if not self.skip_depth:
            self._emit(html.unescape(f"&#{name};"))

    def text(self) -> str:
        raw = "".join(self.parts).replace("\xa0", " ")
        # Outlook writes an empty paragraph as <p>&nbsp;</p>: a line of spaces is blank.
        lines = ["" if not line.strip(" ") else line for line in raw.split("\n")]
        # Comments, doctype and processing instructions produce nothing (default handlers).
        return _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip("\n")


def html_to_text(html_body: str) -> str:
    """Visible text of an HTML body (Graph ``itemBody`` html -> RFC 5545 DESCRIPTION).

    Drops head, style, script and comments; block elements (p, div, li, tr, h1...) and
    ``<br>`` give line breaks; entities are decoded (``&nbsp;`` becomes a space); runs of
    blank lines collapse to one blank line; leading and trailing blank lines are removed.
    """
    if not html_body:
        return ""
    parser = _TextExtractor()
    parser.feed(html_body)
    parser.close()
    return parser.text()


def _line_to_html(line: str) -> str:
    """Escape one line; keep spaces that HTML would collapse as ``&nbsp;``, tabs as ``&#9;``."""
    out: list[str] = []
    previous_space = True  # a space at the start of a line would be dropped
    for char in line:
        if char == " ":
            out.append("&nbsp;" if previous_space else " ")
            previous_space = True
        elif char == "\t":
            out.append("&#9;")
            previous_space = False
        else:
            out.append(html.escape(char, quote=False))
            previous_space = False
    if out and out[-1] == " ":
        out[-1] = "&nbsp;"  # a space at the end of a line would be dropped
    return "".join(out)


def text_to_html(text: str) -> str:
    """A minimal HTML document for a plain-text body (RFC 5545 DESCRIPTION -> Graph html).

    Characters are escaped, each line break becomes ``<br>``, spaces that HTML would
    collapse become ``&nbsp;``; the result is wrapped in ``<html><body>``.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    inner = "<br>\n".join(_line_to_html(line) for line in lines)
    return f"<html><body>{inner}</body></html>" if text else "<html><body></body></html>"


__all__ = ["html_to_text", "text_to_html"]
