"""A conversation as a Markdown document (pure: no Qt, no files)."""

from __future__ import annotations

import datetime as dt

from app.history.models import Conversation, Message

_HEADINGS = {"user": "You", "assistant": "InfiniteVL", "event": "Memory"}


def conversation_markdown(conversation: Conversation, messages: list[Message]) -> str:
    """Title, system prompt, then each message under a heading; images as relative links."""
    when = dt.datetime.fromtimestamp(conversation.created_at).strftime("%Y-%m-%d %H:%M")
    lines = [f"# {conversation.title}", "", f"_Started {when}_", ""]
    if conversation.system_prompt:
        lines += ["> System prompt: " + conversation.system_prompt.replace("\n", "\n> "), ""]
    for message in messages:
        lines += [f"## {_HEADINGS[message.role]}", ""]
        lines += [f"![image {i + 1}]({p.as_uri()})" for i, p in enumerate(message.attachments)]
        if message.attachments:
            lines.append("")
        lines += [message.content, ""]
    return "\n".join(lines).rstrip() + "\n"
