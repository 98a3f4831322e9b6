"""How an error or a note shows the IDs it is about: the first few, quoted, and an
ellipsis when there are more (every refusal names a few samples or features this way)."""


def preview(ids, n=5):
    ids = [str(i) for i in ids]
    shown = ', '.join(repr(i) for i in ids[:n])
    return shown + (', …' if len(ids) > n else '')
