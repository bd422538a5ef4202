import re


def slugify(title: str) -> str:
    """'Hello, World!' -> 'hello-world'"""
    words = re.findall(r"[a-z0-9]+", title.lower())
    if not words:
        raise ValueError("title has no letters or digits")
    return "-".join(words)
