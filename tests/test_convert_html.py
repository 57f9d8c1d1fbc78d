"""HTML <-> plain-text bodies (sync_core.convert.html_text)."""

from __future__ import annotations

import pytest

from sync_core.convert.html_text import html_to_text, text_to_html

OUTLOOK_BODY = (
    "<html>\r\n<head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\r\n"
    "<style type=\"text/css\" style=\"display:none;\"> P {margin-top:0;margin-bottom:0;} </style>\r\n"
    "<title>ignored title</title></head>\r\n<body dir=\"ltr\">\r\n"
    "<div class=\"elementToProof\" style=\"font-family: Aptos\">Line one &amp; more</div>\r\n"
    "<div class=\"elementToProof\"><br></div>\r\n"
    "<div class=\"elementToProof\">Line <b>two</b>,\r\n   wrapped</div>\r\n"
    "<p class=MsoNormal><o:p>&nbsp;</o:p></p><p class=MsoNormal><o:p>&nbsp;</o:p></p>"
    "<p class=MsoNormal><o:p>&nbsp;</o:p></p>"
    "<ul><li>first</li><li>second</li></ul>"
    "<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>"
    "<!-- a comment --><script>alert('x')</script>caf&eacute; &#8364;5 &#x263A;"
    "</body>\r\n</html>\r\n"
)


def test_outlook_html_to_text() -> None:
    assert html_to_text(OUTLOOK_BODY) == (
        "Line one & more\n\nLine two, wrapped\n\nfirst\nsecond\na b\nc d\ncafé €5 ☺"
    )


@pytest.mark.parametrize(
    "text",
    [
        "Hello",
        "two\nlines",
        "para one\n\npara two",
        "  indented\n\ttabbed",
        "x  y   z ",
        "<tag> & \"quotes\" 'single' &amp;",
        "ünïcödé ☺ 😀",
        "",
        "line with trailing spaces  \nnext",
    ],
)
def test_text_survives_html_round_trip(text: str) -> None:
    markup = text_to_html(text)
    assert markup.startswith("<html><body>") and markup.endswith("</body></html>")
    assert html_to_text(markup) == text


def test_text_to_html_escapes() -> None:
    markup = text_to_html("<script>alert(1)</script>\nb & c")
    assert "<script>" not in markup
    assert "&lt;script&gt;" in markup and "&amp;" in markup and "<br>" in markup


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        ("a<br>b<br/>c", "a\nb\nc"),
        ("<p>one</p>\n\n<p>two</p>", "one\ntwo"),
        ("<div>a</div><div><br></div><div><br></div><div><br></div><div>b</div>", "a\n\nb"),
        ("<pre>  keep\n   this</pre>", "  keep\n   this"),
        ("<head><style>p{color:red}</style></head><body>x</body>", "x"),
        ("<body>no head end<head>", "no head end"),
        ("a &lt; b &gt; c &quot;d&quot; &unknown; &", "a < b > c \"d\" &unknown; &"),
        ("", ""),
        ("   \n  ", ""),
    ],
)
def test_html_to_text_cases(markup: str, text: str) -> None:
    assert html_to_text(markup) == text
