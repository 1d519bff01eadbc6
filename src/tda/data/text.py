"""Plain text from the formats the corpus sources ship: Project Gutenberg boilerplate, the Brown corpus's
POS tags, HTML pages, Perl POD, e-mail messages, the GCIDE dictd database and WordNet's data files.
Pure functions of their input (no I/O), each tested on small fixtures."""
from __future__ import annotations

import email
import email.policy
import html
import re
from typing import Iterable

_START_RE = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END_RE = re.compile(
    r"^(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg|"
    r"End of Project Gutenberg's|\*\*\*END OF THE PROJECT GUTENBERG)",
    re.I | re.M,
)


def normalise_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = re.sub(r"[ \t]+\n", "\n", text)  # trailing spaces carry no information
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip() + "\n"


def strip_gutenberg_boilerplate(text: str) -> str:
    """Drop the Project Gutenberg licence header/footer when present (text between the markers)."""
    m = _START_RE.search(text)
    if m:
        text = text[m.end():]
    m = _END_RE.search(text)
    if m:
        text = text[: m.start()]
    return text


_BROWN_TOKEN_RE = re.compile(r"(\S+)/[^\s/]+")


def strip_brown_tags(tagged: str) -> str:
    """`The/at jury/nn said/vbd ./.` -> `The jury said.` — one sentence per line, blank line per paragraph."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", tagged):
        sentences = []
        for line in para.splitlines():
            words = _BROWN_TOKEN_RE.findall(line)
            if not words:
                continue
            s = " ".join(words)
            # `` opens and '' closes a quotation: glue each to the word it belongs to.
            s = re.sub(r"`` ?", '"', s)
            s = re.sub(r" ?''", '"', s)
            s = re.sub(r" ([.,;:!?)\]'])", r"\1", s)  # the corpus separates punctuation; prose doesn't
            s = re.sub(r"([(\[]) ", r"\1", s)
            s = re.sub(r" n't\b", "n't", s)
            sentences.append(s)
        if sentences:
            paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


# ----------------------------------------------------------------------------------------------


_HTML_DROP = re.compile(r"<(script|style|head|nav|header|footer|noscript|svg)\b.*?</\1\s*>", re.S | re.I)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_BLOCK = re.compile(r"</?(?:p|div|br|li|ul|ol|h[1-6]|tr|table|dt|dd|dl|section|blockquote|hr|caption|"
                         r"main|article|tbody|thead)\b[^>]*>", re.I)
_HTML_CELL = re.compile(r"</?t[dh]\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_PRE = re.compile(r"(<pre\b.*?</pre\s*>)", re.S | re.I)


def html_to_text(page: str) -> str:
    """Visible text of an HTML page: scripts, styles, head, nav/header/footer dropped; whitespace folded
    as a browser does (kept inside <pre>); block elements become line breaks, table cells spaces;
    entities decoded."""
    s = _HTML_COMMENT.sub(" ", page)
    s = _HTML_DROP.sub(" ", s)
    parts = _HTML_PRE.split(s)  # odd items are <pre> blocks
    out = []
    for k, part in enumerate(parts):
        if k % 2:
            out.append("\n" + _HTML_TAG.sub("", part) + "\n")
            continue
        part = " ".join(part.split())
        part = _HTML_TAG.sub("", _HTML_CELL.sub(" ", _HTML_BLOCK.sub("\n", part)))
        out.append(re.sub(r" *\n *", "\n", re.sub(r" {2,}", " ", part)))
    s = html.unescape("".join(out))
    s = "\n".join(line.rstrip() for line in s.splitlines())
    return re.sub(r"\n{3,}", "\n\n", s).strip()


_POD_FORMAT = re.compile(r"[BICFSXZ]<([^<>]*)>")
_POD_LINK = re.compile(r"L<(?:([^<>|]*)\|)?([^<>]*)>")
_POD_WIDE = re.compile(r"[BICFSLXZ]<{2,}\s+(.*?)\s+>{2,}", re.S)
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def pod_to_text(pod: str) -> str:
    """Perl POD as plain text: `=head1 NAME` -> `NAME`, `=item x` -> `x`, other commands dropped,
    B<>/I<>/C<>/F<>/L<text|link> formatting codes unwrapped, E<lt>/E<gt> decoded."""
    out = []
    for line in pod.splitlines():
        if line.startswith("="):
            cmd, _, rest = line.partition(" ")
            if cmd.startswith("=head") or cmd == "=item":
                out.append(rest.strip())
            continue
        out.append(line)
    s = "\n".join(out)
    s = re.sub(r"E<(\w+)>", lambda m: _POD_ESCAPES.get(m.group(1), m.group(0)), s)
    s = _POD_WIDE.sub(r"\1", s)
    for _ in range(3):  # codes nest (B<C<x>>): unwrap inner first
        s = _POD_LINK.sub(lambda m: m.group(1) or m.group(2), s)
        s = _POD_FORMAT.sub(r"\1", s)
    return s


def email_body(raw: bytes) -> str:
    """The text of an e-mail without its headers: every text/plain part (text/html parts as text when
    there is no plain part), transfer encodings undone, decoded with the declared charset."""
    msg = email.message_from_bytes(raw)  # compat32: tolerant of 2002-era malformed mail
    plain, htmls = [], []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "latin-1"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:  # unknown charset name
            text = payload.decode("latin-1", errors="replace")
        (plain if ctype == "text/plain" else htmls).append(text)
    if plain:
        return "\n\n".join(plain)
    return "\n\n".join(html_to_text(h) for h in htmls)


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _dictd_number(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def gcide_entries(dict_bytes: bytes, index_text: str) -> list[str]:
    """GCIDE entries in file order, from a dictd `.dict` file's bytes and its `.index` (headword, base64
    byte offset, base64 byte length per line); the `00-database-*` header entries are dropped."""
    raw = dict_bytes
    spans = set()
    for line in index_text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        spans.add((_dictd_number(parts[1]), _dictd_number(parts[2])))
    return [raw[o:o + n].decode("utf-8", errors="replace").strip() for o, n in sorted(spans)]


_WORDNET_POS = {"n": "n.", "v": "v.", "a": "adj.", "s": "adj.", "r": "adv."}


def wordnet_glosses(data_text: str) -> list[str]:
    """`words (pos): gloss` for every synset line of a WordNet `data.*` file (licence header skipped)."""
    out = []
    for line in data_text.splitlines():
        if not line or line.startswith(" ") or "|" not in line:
            continue
        fields, _, gloss = line.partition("|")
        tok = fields.split()
        try:
            n_words = int(tok[3], 16)
        except (IndexError, ValueError):
            continue
        words = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in tok[4:4 + 2 * n_words:2]]
        out.append(f"{', '.join(words)} ({_WORDNET_POS.get(tok[2], tok[2])}): {gloss.strip()}")
    return out


def chunk_texts(items: Iterable[str], max_chars: int = 200_000, sep: str = "\n\n") -> list[str]:
    """Consecutive items joined into texts of at most ~max_chars (an item is never split)."""
    out, cur, n = [], [], 0
    for it in items:
        if cur and n + len(it) > max_chars:
            out.append(sep.join(cur))
            cur, n = [], 0
        cur.append(it)
        n += len(it) + len(sep)
    if cur:
        out.append(sep.join(cur))
    return out
