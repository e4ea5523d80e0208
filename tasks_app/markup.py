"""Markdown of comments, rendered to HTML that is safe to put in a page.

Two layers: the CommonMark parser is told to treat raw HTML as text, and
its output then goes through an allow-list sanitizer (nh3, Ammonia), which
keeps only plain formatting tags, only http(s) and mailto links, and gives
every link ``rel="nofollow noopener noreferrer"``. Images become links to
them: the content security policy would block other servers' images anyway,
and a picture fetched from elsewhere tells that server who read the comment.
"""

from __future__ import annotations

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

_parser = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])


def _image_as_link(renderer, tokens, idx, options, env) -> str:
    # An image becomes a link to it: the reader chooses whether to fetch it.
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = renderer.renderInlineAsText(token.children or [], options, env)
    return f'<a href="{escapeHtml(src)}">{escapeHtml(alt or src)}</a>'


_parser.add_render_rule("image", _image_as_link)

TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "a",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"align"}, "td": {"align"}}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "nofollow noopener noreferrer"


def sanitize(html: str) -> str:
    return nh3.clean(html, tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES, link_rel=LINK_REL)


def render_markdown(text: str) -> SafeString:
    """``text`` (Markdown) as sanitized HTML."""
    return mark_safe(sanitize(_parser.render(text or "")))
