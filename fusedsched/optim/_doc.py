"""Docstrings of the variant classes (AdamW, Momentum), made from their base class's, so
that ``help()`` shows every argument and what differs without a second copy to keep in
step."""


def derive(doc, summary, *, replace=(), drop=(), args=None):
    """``doc`` with its first line replaced by ``summary``, each ``(old, new)`` of
    ``replace`` substituted, the ``Args:`` entries named in ``drop`` removed and those in
    ``args`` (name -> the entry's new text after ``name``, lines after the first indented
    as in the docstring's source) rewritten. An entry is its first line (``name (type):``
    or ``name:``) and the more-indented lines under it. None stays None (``python -OO``)."""
    if doc is None:
        return None
    args = dict(args or {})
    lines = doc.split("\n")
    lines[0] = summary
    out, section, skipping = [], None, None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skipping is not None and line.strip() and indent > skipping:
            continue
        skipping = None
        if line.strip() == "Args:":
            section = indent
        elif section is not None and line.strip() and indent <= section:
            section = None
        name = _entry_name(line) if section is not None and indent > section else None
        if name in drop or name in args:
            skipping = indent
            if name in args:
                out.append(" " * indent + name + args[name])
            continue
        out.append(line)
    text = "\n".join(out)
    for old, new in replace:
        text = text.replace(old, new)
    return text


def _entry_name(line):
    """The argument an ``Args:`` entry line documents, or None."""
    if ":" not in line:
        return None
    head = line.strip().split(":", 1)[0].split(" (", 1)[0]
    return head if head.isidentifier() else None
