"""Structured output: grammars, tools and replies.

- :mod:`.constraints`: :class:`~.constraints.Constraint` (JSON Schema, regex, Lark) and the
  grammar masks over a reference vocabulary.
- :mod:`.tools`: :class:`~.tools.Tool`, :class:`~.tools.ToolCall`,
  :class:`~.tools.Conversation`, and the grammar of a ``tool_choice``.
- :mod:`.replies`: a reply read back as content and calls, whole or streamed.
- :mod:`.chat_format`: messages and tools as each member reads them.
"""
