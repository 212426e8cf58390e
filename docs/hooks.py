"""MkDocs hooks: the docstrings' Sphinx roles read as plain code on the API pages.

The package's docstrings cross-reference with Sphinx roles (``:func:`train```), which read well in
``help()`` and editors; mkdocstrings renders them as ``:func:`` followed by the code, so this hook
drops the role and keeps the code.
"""

from __future__ import annotations

import re
from typing import Any

# a role, and with Sphinx's "~" (show the last name only) the dotted path before that name
ROLE = re.compile(r":(?:func|meth|class|data|attr|mod|exc|obj):\s*<code>(?:~(?:\w+\.)*)?")


def drop_roles(html: str) -> str:
    """``html`` without the ``:role:`` prefix of each ``<code>`` a Sphinx role introduced."""
    return ROLE.sub("<code>", html)


def on_page_content(html: str, **kwargs: Any) -> str:
    return drop_roles(html)
