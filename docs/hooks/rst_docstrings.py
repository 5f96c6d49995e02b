"""A griffe extension for the API reference: the docstrings' reStructuredText bits as Markdown.

zoomfeat's docstrings are Google style with a few Sphinx habits: roles (``:func:`name```,
``:class:`~pkg.Name```) and a paragraph ending in ``::`` before an indented block. mkdocstrings
renders docstrings as Markdown, so a role is shown as the code ``name`` and ``::`` becomes ``:``
(the indented block below it is then a Markdown code block). Loaded by mkdocs.yml
(``plugins: mkdocstrings: handlers: python: options: extensions``).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|exc|obj|const|term|ref):`~?([^`]+)`")
LITERAL_BLOCK = re.compile(r"(\S)::$", re.MULTILINE)


def markdown(text: str) -> str:
    """``text`` with Sphinx roles as code spans and ``::`` literal-block markers as ``:``."""
    text = ROLE.sub(lambda m: f"`{m[1]}`", text)
    return LITERAL_BLOCK.sub(r"\1:", text)


class RstDocstrings(Extension):
    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
