"""Refusal messages that fit a screen: long lists are cut, with the count of the rest."""

MAX_LISTED = 10  # entries a message lists before it abbreviates


def listing(entries, limit=MAX_LISTED, indent='  '):
    """One indented line per entry, at most `limit` of them, then '... and N more'.

    Args:
        entries: a sequence of strings (or objects with a useful `str`).
        limit: how many to show.
        indent: put before each line.
    Returns:
        The lines joined by newlines ('' for no entries).
    """
    lines = [f'{indent}{entry}' for entry in entries[:limit]]
    if len(entries) > limit:
        lines.append(f'{indent}... and {len(entries) - limit} more')
    return '\n'.join(lines)
